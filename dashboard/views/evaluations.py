"""Eval runs, and a baseline against a candidate: per metric the means, the paired difference
with its interval, the p-value and win/tie/loss, per slice, and the cases side by side."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard.live import refresh_on_change
from dashboard.models.evals import Case, Comparison, EvalRun
from dashboard.paging import paged
from dashboard.session import connect, shown

api, principal = connect()
refresh_on_change(api, "evals")
st.title("Evaluations")

suite_filter = st.text_input("Suite (filter, asked of the API)", key="suite-filter") or None
runs: list[EvalRun] = (
    shown(lambda: list(api.every(EvalRun, "/evals", most=200, suite=suite_filter))) or []
)
if not runs:
    st.info("No eval runs yet: `evalhub eval run SUITE.yaml --model MODEL@ALIAS`")
    st.stop()
model_filter = st.multiselect(
    "Models", sorted({r.model_version or r.model for r in runs}), key="models"
)
shown_runs = [r for r in runs if not model_filter or (r.model_version or r.model) in model_filter]
st.dataframe(
    [
        {
            "run": r.id,
            "model": r.model_version or r.model,
            "suite": r.suite_name,
            "status": r.status,
            "score": r.overall_score,
            "passed": r.passed,
            "cases": r.case_count,
            "created": r.created_at[:19],
            **{m: r.value(m) for m in sorted(r.metrics)},
        }
        for r in shown_runs
    ],
    hide_index=True,
)

done = [r for r in shown_runs if r.status == "completed"]
if len(done) < 2:
    st.info(
        "Compare two runs of a suite: run it on a baseline and a candidate, then pick them here."
    )
    st.stop()
labels = {f"{r.model_version or r.model} · {r.id}": r.id for r in done}
names = list(labels)
left, right = st.columns(2)
baseline = labels[left.selectbox("Baseline", names, index=len(names) - 1, key="baseline")]
candidate = labels[right.selectbox("Candidate", names, index=0, key="candidate")]
if baseline == candidate:
    st.warning("Pick two different runs.")
    st.stop()
comparison = shown(
    lambda: api.one(Comparison, "/evals/compare", baseline=baseline, candidate=candidate)
)
if comparison is None:
    st.stop()
level = f"{comparison.confidence:.0%}"
st.caption(
    f"{comparison.shared_cases} shared cases · {level} paired intervals · "
    + " ".join(comparison.notes)
)
rows = [
    {
        "metric": m.metric,
        "n": m.n,
        "baseline": m.baseline_mean,
        "candidate": m.candidate_mean,
        "difference": m.difference,
        f"{level} low": m.ci_low,
        f"{level} high": m.ci_high,
        "p-value": m.p_value,
        "wins": m.wins,
        "ties": m.ties,
        "losses": m.losses,
    }
    for m in comparison.metrics.values()
]
st.dataframe(rows, hide_index=True, key="comparison-table")
measured = [m for m in comparison.metrics.values() if m.difference is not None]
figure = go.Figure(
    go.Scatter(
        x=[m.difference for m in measured],
        y=[m.metric for m in measured],
        mode="markers",
        error_x={
            "type": "data",
            "symmetric": False,
            "array": [(m.ci_high or 0) - (m.difference or 0) for m in measured],
            "arrayminus": [(m.difference or 0) - (m.ci_low or 0) for m in measured],
        },
        marker={"size": 11},
    )
)
figure.add_vline(x=0, line_dash="dash", line_color="#888")
figure.update_layout(
    title=f"Candidate - baseline, with {level} intervals", xaxis_title="difference", height=320
)
st.plotly_chart(figure, key="difference-chart")

if comparison.slices:
    st.subheader("Per slice")
    st.dataframe(
        [
            {
                "slice": name,
                "metric": metric,
                "n": values.get("n"),
                "difference": values.get("difference"),
                "low": values.get("ci_low"),
                "high": values.get("ci_high"),
                "p-value": values.get("p_value"),
            }
            for name, part in comparison.slices.items()
            for metric, values in part.get("metrics", {}).items()
        ],
        hide_index=True,
    )

st.subheader("Cases side by side")
regressed = {r.get("case_id") for r in comparison.regressions}
only_regressed = st.toggle(f"Only regressed cases ({len(regressed)})", key="only-regressed")


def read_cases(token: str | None) -> tuple[list[Case], str | None]:
    return api.page(Case, f"/evals/{candidate}/cases", limit=25, page_token=token)


cases = paged(f"cases:{candidate}", read_cases)
base_outputs = {c.case_id: c for c in api.every(Case, f"/evals/{baseline}/cases", most=1000)}
table = []
for case in cases:
    if only_regressed and case.case_id not in regressed:
        continue
    before = base_outputs.get(case.case_id)
    table.append(
        {
            "case": case.case_id,
            "regressed": case.case_id in regressed,
            "tags": ", ".join(case.tags),
            "baseline output": before.output if before else None,
            "candidate output": case.output,
            **{
                f"{metric} (candidate)": (score or {}).get("value")
                for metric, score in (case.scores or {}).items()
            },
        }
    )
if table:
    st.dataframe(table, hide_index=True, key="cases-table")
else:
    st.info("No regressed cases on this page.")
