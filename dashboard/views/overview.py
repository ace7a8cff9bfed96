"""The whole loop at a glance: what is deployed, what is rolling out, what fired, what runs."""

from __future__ import annotations

from functools import partial

import streamlit as st

from dashboard.live import refresh_on_change
from dashboard.models.evals import EvalRun
from dashboard.models.finetune import Job
from dashboard.models.serving import Alert, Decision, Deployment
from dashboard.session import connect, shown

api, principal = connect()
refresh_on_change(api)
st.title("Overview")

deployments: list[Deployment] = shown(lambda: api.many(Deployment, "/deployments")) or []
alerts: list[Alert] = shown(lambda: api.page(Alert, "/alerts", limit=20)[0]) or []
runs: list[EvalRun] = shown(lambda: api.page(EvalRun, "/evals", limit=10)[0]) or []
jobs_body = shown(lambda: api.send("GET", "/v1/fine_tuning/jobs", params={"limit": 20})) or {}
jobs = [Job.model_validate(job) for job in jobs_body.get("data", [])]
rollouts = [d for d in deployments if d.rollout and d.rollout.status in ("running", "paused")]
running_jobs = [j for j in jobs if j.status in ("validating_files", "queued", "running")]

tiles = st.columns(4)
tiles[0].metric("Deployments", len(deployments))
tiles[1].metric("Rollouts running", len(rollouts))
tiles[2].metric("Alerts", len(alerts))
tiles[3].metric("Fine-tuning jobs running", len(running_jobs))

st.subheader("Deployments")
if not deployments:
    st.info(
        "No deployments yet: `evalhub deploy create NAME --backend BACKEND --arm control=MODEL@production:100`"
    )
for deployment in deployments:
    arms = ", ".join(f"{arm.name} → {arm.model} ({arm.weight:g}%)" for arm in deployment.arms)
    line = f"**{deployment.name}** on `{deployment.backend}`: {arms}"
    if deployment.rollout:
        line += f" · rollout {deployment.rollout.status}"
        path = f"/deployments/{deployment.name}/decisions"
        page = shown(partial(api.page, Decision, path, limit=1))
        decisions = page[0] if page else []
        if decisions:
            line += f" · controller: **{decisions[0].action}** ({decisions[0].reason})"
    st.markdown(line)

st.subheader("Alerts")
if not alerts:
    st.info(
        "No alerts fired. Add a rule: `evalhub monitor alert-rule NAME --deployment D --metric error_rate --above 0.05`"
    )
else:
    st.dataframe(
        [
            {
                "time": a.created_at[:19],
                "rule": a.rule,
                "deployment": a.deployment,
                "severity": a.severity,
                "value": a.value,
                "condition": a.condition,
            }
            for a in alerts
        ],
        hide_index=True,
    )

st.subheader("Latest evaluations")
if not runs:
    st.info("No eval runs yet: `evalhub eval run SUITE.yaml --model MODEL@ALIAS`")
else:
    st.dataframe(
        [
            {
                "run": r.id,
                "model": r.model_version or r.model,
                "suite": r.suite_name,
                "status": r.status,
                "score": r.overall_score,
                "gate": {True: "pass", False: "fail"}.get(r.passed, "-")
                if r.passed is not None
                else "-",
                "cases": r.case_count,
            }
            for r in runs
        ],
        hide_index=True,
    )

st.subheader("Fine-tuning jobs")
if not jobs:
    st.info(
        "No fine-tuning jobs yet: `evalhub finetune run job.yaml`, or the Fine-tuning page's form"
    )
else:
    st.dataframe(
        [
            {"job": j.id, "base": j.model, "status": j.status, "model": j.fine_tuned_model}
            for j in jobs
        ],
        hide_index=True,
    )
