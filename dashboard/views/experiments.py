"""Experiments: the leaderboard of a sweep (each trial's selected checkpoint on the held-out
suite, its interval against the baseline, whether it can be told from the best), the suite
score of every scored checkpoint as trials train, and cancel."""

from __future__ import annotations

from functools import partial

import plotly.graph_objects as go
import streamlit as st

from dashboard.live import refresh_on_change
from dashboard.models.experiments import Experiment, TrialResult
from dashboard.session import attempt, connect, shown

api, principal = connect()
refresh_on_change(api, "experiments", "models")
st.title("Experiments")

experiments = shown(lambda: list(api.every(Experiment, "/experiments", most=100))) or []
if not experiments:
    st.info("No experiments yet: `evalhub experiment run sweep.yaml` (see the README).")
    st.stop()

st.dataframe(
    [
        {
            "experiment": e.id,
            "name": e.name,
            "status": e.status,
            "metric": e.metric,
            "trials": f"{e.trials_finished}/{e.trials_total}",
            "winner": e.winner or "-",
        }
        for e in experiments
    ],
    hide_index=True,
)
chosen = st.selectbox("Experiment", [e.id for e in experiments], key="experiment")
experiment = next(e for e in experiments if e.id == chosen)
board = experiment.leaderboard

tiles = st.columns(4)
tiles[0].metric("Status", experiment.status)
tiles[1].metric("Trials ended", f"{experiment.trials_finished}/{experiment.trials_total}")
baseline = f"{board.baseline_value:.3g}" if board.baseline_value is not None else "-"
tiles[2].metric(f"Baseline {board.baseline}", baseline)
tiles[3].metric("Winner", experiment.winner or "-")
if experiment.error:
    st.error(experiment.error)


def label(row: TrialResult) -> str:
    return f"trial {row.trial}: " + " ".join(f"{k}={v}" for k, v in row.params.items())


def versus_best(row: TrialResult) -> str:
    if row.best:
        return "best"
    if row.rank is None:
        return ""
    return "cannot tell apart" if row.tied_with_best else "worse"


st.dataframe(
    [
        {
            "rank": row.rank,
            "trial": label(row),
            "status": row.status,
            board.metric: row.value,
            "vs baseline": row.vs_baseline.difference if row.vs_baseline else None,
            "95% CI": (
                f"[{row.vs_baseline.ci_low:+.2f}, {row.vs_baseline.ci_high:+.2f}]"
                if row.vs_baseline and row.vs_baseline.ci_low is not None
                else ""
            ),
            "vs best": versus_best(row),
            "version": row.version,
            "step": row.selected_step,
            "train s": row.train_seconds,
            "tokens": row.trained_tokens,
            "memory est. MiB": (
                round(row.memory_estimate_bytes / 2**20, 1) if row.memory_estimate_bytes else None
            ),
            "cost": row.cost,
            "error": row.error,
        }
        for row in board.trials
    ],
    hide_index=True,
    key="leaderboard",
)

scored = [row for row in board.trials if row.value is not None]
if scored:
    figure = go.Figure()
    figure.add_trace(
        go.Bar(
            x=[label(row) for row in scored],
            y=[row.value for row in scored],
            marker_color=["#2e7d32" if row.tied_with_best else "#90a4ae" for row in scored],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [
                    (row.vs_baseline.ci_high - row.vs_baseline.difference)
                    if row.vs_baseline
                    and row.vs_baseline.ci_high is not None
                    and row.vs_baseline.difference is not None
                    else 0
                    for row in scored
                ],
                "arrayminus": [
                    (row.vs_baseline.difference - row.vs_baseline.ci_low)
                    if row.vs_baseline
                    and row.vs_baseline.ci_low is not None
                    and row.vs_baseline.difference is not None
                    else 0
                    for row in scored
                ],
            },
            name=board.metric,
        )
    )
    if board.baseline_value is not None:
        figure.add_hline(
            y=board.baseline_value, line_dash="dash", annotation_text=f"baseline {board.baseline}"
        )
    figure.update_layout(
        title=f"{board.metric} on the held-out suite (bars: 95% CI of the gain over the baseline; "
        "green: cannot be told from the best)",
        yaxis_title=board.metric,
        height=360,
    )
    st.plotly_chart(figure, key="leaderboard-chart")


# Each trial's checkpoints as they are scored: the curve shows where training over- or underfits.
def checkpoint_scores(job_id: str) -> list[tuple[int, float]]:
    listed = api.send("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 100})
    return sorted(
        (c["step_number"], c["metrics"]["eval"]["value"])
        for c in listed["data"]
        if (c.get("metrics") or {}).get("eval")
    )


curves = go.Figure()
for row in board.trials:
    points: list[tuple[int, float]] = shown(partial(checkpoint_scores, row.job_id)) or []
    if points:
        curves.add_trace(
            go.Scatter(
                x=[step for step, _ in points],
                y=[value for _, value in points],
                name=label(row),
                mode="lines+markers",
            )
        )
curves.update_layout(
    title=f"{board.metric} of every scored checkpoint", xaxis_title="step", height=340
)
st.plotly_chart(curves, key="checkpoint-chart")

if experiment.status in ("queued", "running"):
    cancel = st.button(
        "Cancel the experiment and its trials",
        key="cancel-experiment",
        disabled=not principal.is_editor,
        help=None if principal.is_editor else f"needs the editor role; you are {principal.role}",
    )
    if cancel:
        attempt(
            lambda: api.post(f"/experiments/{experiment.id}/cancel"),
            f"{experiment.id} cancelled",
        )
