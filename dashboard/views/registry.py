"""Models and versions, a version's lineage as a graph, an alias's history as a timeline, and
the alias moves an editor (promote) or an admin (roll back) may make."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard.client import Api
from dashboard.live import refresh_on_change
from dashboard.models.registry import AliasMove, Lineage, Model, Version
from dashboard.models.serving import Deployment
from dashboard.paging import paged
from dashboard.session import admin_button, attempt, connect, shown

api, principal = connect()
refresh_on_change(api, "models")
st.title("Registry")

models: list[Model] = shown(lambda: list(api.every(Model, "/models", most=500))) or []
if not models:
    st.info(
        "No models yet: `evalhub models create-tiny tiny` builds and registers a base model offline."
    )
    st.stop()
st.dataframe(
    [
        {
            "model": m.name,
            "kind": m.kind,
            "latest": m.latest_version,
            "aliases": ", ".join(f"@{a}→{v}" for a, v in sorted(m.aliases.items())),
            "description": m.description,
        }
        for m in models
    ],
    hide_index=True,
)
name = st.selectbox("Model", [m.name for m in models], key="model")
model = next(m for m in models if m.name == name)

st.subheader(f"Versions of {name}")
versions = paged(
    f"versions:{name}",
    lambda token: api.page(Version, f"/models/{name}/versions", limit=20, page_token=token),
)
st.dataframe(
    [
        {
            "version": v.version,
            "status": v.status,
            "aliases": ", ".join(v.aliases),
            "base": v.base,
            "method": v.peft_method,
            "rank": v.rank,
            "dataset": v.dataset,
            "job": v.training_job,
            "MB": round(v.size_bytes / 1e6, 2),
            "digest": v.digest[:12],
            "created": v.created_at[:19],
        }
        for v in versions
    ],
    hide_index=True,
)


def serving(api: Api, ref: str) -> list[tuple[str, str]]:
    """The deployment arms whose model reference (an alias, say) resolves to the version `ref`."""

    def arms() -> list[tuple[str, str]]:
        return [
            (deployment.name, arm.name)
            for deployment in api.many(Deployment, "/deployments")
            for arm in deployment.arms
            if arm.model == ref or api.one(Version, "/resolve", ref=arm.model).ref == ref
        ]

    return shown(arms) or []


if versions:
    chosen = st.selectbox(
        "Lineage of version", [v.version for v in versions], key="lineage-version"
    )
    lineage = shown(lambda: api.one(Lineage, f"/models/{name}/versions/{chosen}/lineage"))
    if lineage is not None:
        me = lineage.version.ref
        nodes: dict[str, str] = {me: "version"}
        edges: list[tuple[str, str, str]] = []
        if lineage.base is not None:
            nodes[lineage.base.ref] = "base"
            edges.append((lineage.base.ref, me, "adapter of"))
        for edge in lineage.upstream:
            source = f"{edge.source_kind}:{edge.source_id}"
            nodes.setdefault(source, edge.source_kind)
            edges.append((source, me, edge.relation))
        if lineage.dataset is not None:
            nodes[lineage.dataset.ref] = "dataset"
            edges.append((lineage.dataset.ref, me, "trained on"))
        for edge in lineage.downstream:
            target = f"{edge.target_kind}:{edge.target_id}"
            nodes.setdefault(target, edge.target_kind)
            edges.append((me, target, edge.relation))
        for ref in lineage.derived:
            nodes.setdefault(ref, "version")
            edges.append((me, ref, "base of"))
        for deployment, arm in serving(api, me):
            node = f"deployment:{deployment}/{arm}"
            nodes[node] = "deployment arm"
            edges.append((me, node, "served by"))
        upstream = [n for n in nodes if any(e[0] == n and e[1] == me for e in edges)]
        downstream = [n for n in nodes if any(e[0] == me and e[1] == n for e in edges)]
        place = {me: (1.0, 0.0)}
        for column, group in ((0.0, upstream), (2.0, downstream)):
            for row, node in enumerate(group):
                place[node] = (column, row - (len(group) - 1) / 2)
        figure = go.Figure()
        for source, target, relation in edges:
            (x0, y0), (x1, y1) = place[source], place[target]
            figure.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[y0, y1],
                    mode="lines",
                    line={"color": "#999"},
                    hoverinfo="text",
                    text=relation,
                    showlegend=False,
                )
            )
        figure.add_trace(
            go.Scatter(
                x=[place[n][0] for n in place],
                y=[place[n][1] for n in place],
                mode="markers+text",
                text=[f"{n}<br>({nodes[n]})" for n in place],
                textposition="top center",
                marker={"size": 18, "color": ["#d62728" if n == me else "#1f77b4" for n in place]},
                showlegend=False,
            )
        )
        figure.update_layout(
            title=f"Lineage of {me}: upstream left, downstream right",
            height=360,
            xaxis={"visible": False, "range": [-0.6, 2.6]},
            yaxis={"visible": False},
        )
        st.plotly_chart(figure, key="lineage-graph")
        st.caption(" · ".join(f"{s} —{r}→ {t}" for s, t, r in edges) or "no recorded lineage")

st.subheader("Aliases")
if not model.aliases:
    st.info(f"No aliases on {name}: `evalhub alias set {name}@production VERSION`")
    st.stop()
alias = st.selectbox("Alias", sorted(model.aliases), key="alias")
history: list[AliasMove] = (
    shown(lambda: list(api.every(AliasMove, f"/models/{name}/aliases/{alias}/history", most=200)))
    or []
)
if history:
    figure = go.Figure(
        go.Scatter(
            x=[h.created_at for h in history],
            y=[h.to_version for h in history],
            mode="lines+markers+text",
            line={"shape": "hv"},
            text=[f"v{h.to_version}" if h.to_version else "deleted" for h in history],
            textposition="top center",
            hovertext=[f"{h.action} by {h.actor}: {h.reason}" for h in history],
        )
    )
    figure.update_layout(title=f"{name}@{alias} over time", yaxis_title="version", height=300)
    st.plotly_chart(figure, key="alias-timeline")
    st.dataframe(
        [
            {
                "time": h.created_at[:19],
                "action": h.action,
                "from": h.from_version,
                "to": h.to_version,
                "by": h.actor,
                "reason": h.reason,
            }
            for h in history
        ],
        hide_index=True,
    )

st.markdown(f"**{name}@{alias}** points at version **{model.aliases[alias]}**")
left, right = st.columns(2)
with left:
    version_to = st.number_input(
        "Move the alias to version",
        min_value=1,
        max_value=model.latest_version or 1,
        value=model.latest_version or 1,
        key="promote-version",
    )
    if admin_button(principal, f"Promote: {alias} → {version_to}", key="promote", role="editor"):
        attempt(
            lambda: api.put(
                f"/models/{name}/aliases/{alias}",
                {"version": int(version_to), "reason": "dashboard"},
            ),
            f"{name}@{alias} now points at version {version_to}",
        )
with right:
    if admin_button(principal, f"Roll back {alias}", key="rollback-alias"):
        moved = attempt(
            lambda: api.post(f"/models/{name}/aliases/{alias}/rollback", {"reason": "dashboard"}),
            f"{name}@{alias} rolled back",
        )
