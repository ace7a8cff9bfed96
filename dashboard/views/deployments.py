"""A deployment's arms: requests, latency percentiles, errors, online quality, feedback and cost
over time; rollout controls and rollback; the controller's decisions with their numbers."""

from __future__ import annotations

from functools import partial

import plotly.graph_objects as go
import streamlit as st

from dashboard.live import refresh_on_change
from dashboard.models.serving import Decision, Deployment, QualityRow
from dashboard.paging import paged
from dashboard.session import admin_button, attempt, connect, shown

api, principal = connect()
st.title("Deployments and A/B")
deployments: list[Deployment] = shown(lambda: api.many(Deployment, "/deployments")) or []
if not deployments:
    st.info(
        "No deployments yet: `evalhub deploy create NAME --backend BACKEND --arm control=MODEL@production:100`"
    )
    st.stop()
name = st.selectbox("Deployment", [d.name for d in deployments], key="deployment")
refresh_on_change(api, f"deployments/{name}")
deployment = next(d for d in deployments if d.name == name)

st.dataframe(
    [{"arm": a.name, "model": a.model, "weight %": a.weight} for a in deployment.arms],
    hide_index=True,
    key="arms",
)
report = shown(lambda: api.get("/monitors/quality", deployment=name)) or {"rows": []}
rows = [QualityRow.model_validate(r) for r in report["rows"]]
if rows:
    st.subheader("Per arm")
    st.dataframe(
        [
            {
                "arm": r.arm,
                "version": r.version,
                "requests": r.requests,
                "errors": r.errors,
                "error rate": r.error_rate,
                "p50 ms": r.latency_p50_ms,
                "p95 ms": r.latency_p95_ms,
                "p99 ms": r.latency_p99_ms,
                "feedback rate": r.feedback_rate,
                **{
                    f"{k} (online)": (v or {}).get("mean") if isinstance(v, dict) else v
                    for k, v in r.metrics.items()
                },
                "cost": r.cost,
            }
            for r in rows
        ],
        hide_index=True,
        key="per-arm",
    )
else:
    st.info(f'No traffic on {name} yet: send requests with the `openai` client, `model="{name}"`.')

timeline = shown(lambda: api.get("/monitors/quality", deployment=name, bucket="1min")) or {
    "rows": []
}
buckets = [QualityRow.model_validate(r) for r in timeline["rows"]]
if buckets:
    arms = sorted({b.arm or "" for b in buckets})
    for measure, title in (
        ("requests", "Requests per minute"),
        ("latency_p95_ms", "Latency p95 (ms)"),
        ("error_rate", "Error rate"),
        ("cost", "Cost"),
    ):
        figure = go.Figure()
        for arm in arms:
            points = [b for b in buckets if (b.arm or "") == arm]
            figure.add_trace(
                go.Scatter(
                    x=[b.bucket for b in points],
                    y=[getattr(b, measure) for b in points],
                    name=arm,
                    mode="lines+markers",
                )
            )
        figure.update_layout(title=title, height=260, margin={"t": 40, "b": 20})
        st.plotly_chart(figure, key=f"chart-{measure}")

st.subheader("Rollout")
rollout = deployment.rollout
if rollout:
    st.markdown(
        f"**{rollout.status}** · control `{rollout.control}`, candidate `{rollout.candidate}` · steps "
        + " → ".join(f"{w:g}%" for w in rollout.steps)
        + f" (at step {rollout.index + 1})"
    )
else:
    st.caption(
        "No rollout. Start one with analysis so the controller steps, holds or rolls back by itself."
    )
columns = st.columns(5)
steps_text = columns[0].text_input("Steps for start", "10,50,100", key="steps")
for column, action in zip(columns[1:], ("start", "step", "pause", "abort"), strict=True):
    with column:
        if admin_button(principal, action.capitalize(), key=f"rollout-{action}", role="editor"):
            body: dict[str, object] = {"action": action}
            if action == "start":
                body["steps"] = [float(w) for w in steps_text.split(",") if w.strip()]
                body["analysis"] = {"guards": [{"name": "error_rate", "margin": 0.05}]}
            attempt(
                partial(api.post, f"/deployments/{name}/rollout", body),
                f"rollout {action}: done",
            )
if admin_button(principal, "Roll back", key="rollback-deployment", role="editor"):
    attempt(
        lambda: api.post(f"/deployments/{name}/rollback"),
        f"{name} rolled back to its previous arms",
    )

st.subheader("The controller's decisions")
decisions = paged(
    f"decisions:{name}",
    lambda token: api.page(Decision, f"/deployments/{name}/decisions", limit=20, page_token=token),
)
if not decisions:
    st.caption(
        "No decisions yet: the controller decides on each monitor pass (`evalhub monitor run`)."
    )
for decision in decisions:
    numbers = "; ".join(
        f"{m['name']}: {m['verdict']}"
        + (f" [{m['low']:+.3f}, {m['high']:+.3f}]" if m.get("low") is not None else "")
        for m in decision.metrics
    )
    st.markdown(
        f"`{decision.created_at[:19]}` **{decision.action}** at {decision.weight:g}% "
        f"({decision.candidate_version} vs {decision.control_version}): {decision.reason}  \n{numbers}"
    )
