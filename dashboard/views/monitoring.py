"""Drift checks over time per deployment and arm with Evidently's report, quality, cost and
feedback, and the alerts that fired with their deliveries."""

from __future__ import annotations

from functools import partial

import plotly.graph_objects as go
import streamlit as st
import streamlit.components.v1 as components

from dashboard.live import refresh_on_change
from dashboard.models.serving import Alert, DriftCheck
from dashboard.paging import paged
from dashboard.session import connect, shown

api, principal = connect()
refresh_on_change(api, "deployments", "monitors", "alerts")
st.title("Monitoring")

checks: list[DriftCheck] = (
    shown(lambda: list(api.every(DriftCheck, "/monitors/drift", most=200))) or []
)
st.subheader("Drift")
if not checks:
    st.info(
        "No drift checks yet: `evalhub monitor drift DEPLOYMENT --reference-first 500 --current-last 500`"
    )
else:
    figure = go.Figure()
    for key in sorted({(c.deployment, c.arm or "all arms") for c in checks}):
        points = [c for c in checks if (c.deployment, c.arm or "all arms") == key]
        figure.add_trace(
            go.Scatter(
                x=[c.created_at for c in points],
                y=[c.share_drifted for c in points],
                mode="lines+markers",
                name=f"{key[0]} · {key[1]}",
                marker={"symbol": ["x" if c.drifted else "circle" for c in points], "size": 10},
            )
        )
    figure.update_layout(
        title="Share of drifted columns per check (x: drift found)",
        yaxis={"range": [0, 1]},
        height=300,
    )
    st.plotly_chart(figure, key="drift-chart")
    st.dataframe(
        [
            {
                "check": c.id,
                "time": c.created_at[:19],
                "deployment": c.deployment,
                "arm": c.arm or "all",
                "drifted": c.drifted,
                "share drifted": c.share_drifted,
                "drifted columns": ", ".join(
                    col["column"] for col in c.summary.get("columns", []) if col["drifted"]
                ),
            }
            for c in checks
        ],
        hide_index=True,
        key="drift-table",
    )
    chosen = st.selectbox("Evidently report of check", [c.id for c in checks], key="drift-check")
    report = shown(lambda: api.get(f"/monitors/drift/{chosen}/report"))
    if isinstance(report, str):
        with st.expander("Evidently report", expanded=False):
            components.html(report, height=700, scrolling=True)

st.subheader("Cost and feedback")
deployments = shown(lambda: api.get("/deployments")) or []
for deployment in deployments:
    name = deployment["name"]
    cost = shown(partial(api.get, "/monitors/cost", deployment=name))
    feedback_page = shown(partial(api.get, "/feedback", deployment=name, limit=100)) or {"data": []}
    scores = [f["score"] for f in feedback_page["data"]]
    left, right = st.columns(2)
    left.metric(
        f"{name}: cost", f"{cost['cost']:.4f} for {cost['requests']} requests" if cost else "-"
    )
    right.metric(
        f"{name}: feedback (last {len(scores)})",
        f"{sum(scores) / len(scores):.2f} mean" if scores else "none",
    )

st.subheader("Alerts")
alerts = paged("alerts", lambda token: api.page(Alert, "/alerts", limit=20, page_token=token))
if not alerts:
    st.info(
        "No alerts fired. Rules: `evalhub monitor alert-rule NAME --deployment D --metric error_rate --above 0.05`"
    )
else:
    st.dataframe(
        [
            {
                "alert": a.id,
                "time": a.created_at[:19],
                "rule": a.rule,
                "deployment": a.deployment,
                "metric": a.metric,
                "value": a.value,
                "condition": a.condition,
                "severity": a.severity,
                "delivery": a.delivery,
            }
            for a in alerts
        ],
        hide_index=True,
        key="alerts-table",
    )
    detail = shown(lambda: api.get(f"/alerts/{alerts[0].id}"))
    if detail:
        st.caption(f"Deliveries of alert {alerts[0].id}: {len(detail.get('deliveries', []))}")
        st.dataframe(detail.get("deliveries", []), hide_index=True)
rules = shown(lambda: api.get("/alerts/rules")) or []
st.caption(
    "Rules: "
    + (
        ", ".join(
            f"{r['name']} ({r['metric']} {r['comparison']} {r['threshold']:g} on {r['deployment']})"
            for r in rules
        )
        or "none"
    )
)
