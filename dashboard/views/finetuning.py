"""Fine-tuning jobs: status, loss and validation curves while they train, events, checkpoints,
hyperparameters; two jobs side by side; and a form to start one from a registered dataset."""

from __future__ import annotations

from datetime import UTC, datetime

import plotly.graph_objects as go
import streamlit as st

from dashboard.live import refresh_on_change
from dashboard.models.finetune import Job, RunMetrics
from dashboard.session import attempt, connect, shown

api, principal = connect()
refresh_on_change(api, "jobs", "models")
st.title("Fine-tuning")

body = shown(lambda: api.send("GET", "/v1/fine_tuning/jobs", params={"limit": 50})) or {}
jobs = [Job.model_validate(job) for job in body.get("data", [])]


def when(seconds: int | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") if seconds else "-"


if not jobs:
    st.info("No fine-tuning jobs yet: `evalhub finetune run job.yaml`, or start one below.")
else:
    st.dataframe(
        [
            {
                "job": j.id,
                "base": j.model,
                "status": j.status,
                "method": j.evalhub.get("method"),
                "model": j.fine_tuned_model,
                "tokens": j.trained_tokens,
                "created": when(j.created_at),
                "finished": when(j.finished_at),
            }
            for j in jobs
        ],
        hide_index=True,
    )
    job_id = st.selectbox("Job", [j.id for j in jobs], key="job")
    metrics = shown(lambda: api.one(RunMetrics, f"/finetune/runs/{job_id}/metrics"))
    if metrics is not None:
        tiles = st.columns(4)
        tiles[0].metric("Status", metrics.status)
        tiles[1].metric(
            "Best validation loss",
            f"{metrics.best_valid_loss:.4f}" if metrics.best_valid_loss is not None else "-",
        )
        tiles[2].metric(
            "Peak memory",
            f"{metrics.peak_memory_bytes / 2**20:.0f} MiB" if metrics.peak_memory_bytes else "-",
        )
        tiles[3].metric("Registered as", metrics.registered_version or "-")
        train = [p for p in metrics.series if p.train_loss is not None]
        valid = [p for p in metrics.series if p.valid_loss is not None]
        figure = go.Figure()
        figure.add_trace(
            go.Scatter(
                x=[p.step for p in train], y=[p.train_loss for p in train], name="train loss"
            )
        )
        figure.add_trace(
            go.Scatter(
                x=[p.step for p in valid],
                y=[p.valid_loss for p in valid],
                name="validation loss",
                mode="lines+markers",
            )
        )
        figure.update_layout(
            title=f"Loss of {job_id} ({len(train)} training points)",
            xaxis_title="step",
            yaxis_title="loss",
            height=340,
        )
        st.plotly_chart(figure, key="loss-chart")
        st.markdown("**Hyperparameters**")
        st.json(metrics.params, expanded=False)
    events = (
        shown(
            lambda: api.send("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 50})
        )
        or {}
    )
    checkpoints = shown(lambda: api.send("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints")) or {}
    left, right = st.columns(2)
    left.markdown("**Events**")
    left.dataframe(
        [
            {"time": when(e["created_at"]), "level": e["level"], "message": e["message"]}
            for e in events.get("data", [])
        ],
        hide_index=True,
    )
    right.markdown("**Checkpoints**")
    rows = []
    for checkpoint in checkpoints.get("data", []):
        metrics = dict(checkpoint.get("metrics") or {})
        scored = metrics.pop("eval", None)  # the checkpoint's run on the job's held-out suite
        suite = {
            f"suite {name}": value for name, value in (scored or {}).get("metrics", {}).items()
        }
        rows.append({"step": checkpoint["step_number"], **metrics, **suite})
    right.dataframe(rows, hide_index=True)

    if len(jobs) >= 2:
        st.subheader("Two jobs side by side")
        a, b = st.columns(2)
        first = a.selectbox("First", [j.id for j in jobs], index=0, key="compare-a")
        second = b.selectbox("Second", [j.id for j in jobs], index=1, key="compare-b")
        compared = shown(lambda: api.get("/finetune/runs/compare", job=[first, second]))
        if compared:
            st.caption(
                "Parameters that differ: " + (", ".join(compared["differing_params"]) or "none")
            )
            st.dataframe(compared["runs"], key="compare-table")

st.subheader("Start a job")
datasets = shown(lambda: api.get("/datasets", limit=100)) or {"data": []}
bases = shown(lambda: api.get("/models", limit=100)) or {"data": []}
with st.form("start-job"):
    base = st.selectbox(
        "Base model", [m["name"] for m in bases["data"] if m["kind"] == "base"], key="form-base"
    )
    dataset = st.selectbox("Dataset", [d["name"] for d in datasets["data"]], key="form-dataset")
    method = st.selectbox("Method", ["lora", "dora", "qlora", "galore", "full"], key="form-method")
    steps = st.number_input("Steps", min_value=1, value=100, key="form-steps")
    estimate = (
        shown(lambda: api.post("/finetune/estimate", {"model": base, "method": method}))
        if base
        else None
    )
    if estimate:
        st.caption(
            "Memory estimate: "
            + ", ".join(
                f"{k} {v}" for k, v in estimate["estimate"].items() if not isinstance(v, dict)
            )
        )
    submitted = st.form_submit_button(
        "Start",
        key="start-job",
        disabled=not principal.is_editor,
        help=None if principal.is_editor else f"needs the editor role; you are {principal.role}",
    )
if submitted and base and dataset:

    def start() -> object:
        latest = next(d["latest_version"] for d in datasets["data"] if d["name"] == dataset)
        content = api.send("GET", f"/api/v1/datasets/{dataset}/versions/{latest}/content")
        upload = api.send(
            "POST",
            "/v1/files",
            files={"file": (f"{dataset}.jsonl", content)},
            data={"purpose": "fine-tune"},
        )
        return api.send(
            "POST",
            "/v1/fine_tuning/jobs",
            json={
                "model": base,
                "training_file": upload["id"],
                "evalhub": {"method": method, "max_steps": int(steps)},
            },
        )

    attempt(start, f"job started on {dataset} with {method}")
