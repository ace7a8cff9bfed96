"""Paired comparison of two runs over the cases they share, per metric and per slice."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from evalhub.eval.record import EvalRun
from evalhub.eval.stats import (
    is_binary,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_permutation_pvalue,
    paired_proportion_ci,
)
from evalhub.eval.suite import SliceSpec

# Per-case differences smaller than this count as ties (floating-point noise, not a change).
TIE_TOLERANCE = 1e-9


class MetricComparison(BaseModel):
    metric: str
    n: int
    higher_is_better: bool = True
    baseline_mean: float | None
    candidate_mean: float | None
    difference: float | None = Field(description="candidate mean - baseline mean")
    ci_low: float | None = Field(description="Lower bound of the CI of candidate - baseline.")
    ci_high: float | None
    p_value: float | None
    test: Literal["mcnemar", "permutation", "none"] = "none"
    interval: Literal["tango-score", "bootstrap-t", "percentile", "none"] = Field(
        default="none",
        description="How the CI was made: Tango's score interval for paired 0/1 outcomes, a "
        "studentized bootstrap over cases otherwise (percentile where nearly all cases tie)",
    )
    wins: int = 0
    ties: int = 0
    losses: int = 0

    @property
    def worst_improvement(self) -> float | None:
        """The CI bound in the direction of getting worse, signed so that negative is worse."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low if self.higher_is_better else -self.ci_high


class CaseDelta(BaseModel):
    case_id: str
    metric: str
    baseline_value: float
    candidate_value: float
    change: float = Field(description="Improvement, signed so that negative is worse.")
    baseline_output: str
    candidate_output: str


class SliceComparison(BaseModel):
    spec: SliceSpec
    metrics: dict[str, MetricComparison] = Field(default_factory=dict)


class Comparison(BaseModel):
    suite_name: str
    baseline_run_id: str
    candidate_run_id: str
    shared_cases: int
    only_in_baseline: int
    only_in_candidate: int
    confidence: float
    n_resamples: int
    seed: int
    metrics: dict[str, MetricComparison] = Field(default_factory=dict)
    slices: dict[str, SliceComparison] = Field(default_factory=dict)
    regressions: list[CaseDelta] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list,
        description="Where a run's own aggregate (corpus BLEU, latency p50) is not the per-case "
        "mean that the paired statistics compare",
    )


def compare_metric(
    name: str,
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    higher_is_better: bool = True,
    binary: bool | None = None,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> MetricComparison:
    """Means, paired difference, bootstrap CI, p-value and win/tie/loss for aligned arrays."""
    n = int(baseline.size)
    if n == 0:
        return MetricComparison(
            metric=name,
            n=0,
            higher_is_better=higher_is_better,
            baseline_mean=None,
            candidate_mean=None,
            difference=None,
            ci_low=None,
            ci_high=None,
            p_value=None,
        )
    differences = candidate - baseline
    test: Literal["mcnemar", "permutation"]
    # McNemar and the score interval need 0/1 outcomes; a binary metric averaged over repeats
    # is continuous.
    if binary is not False and is_binary(baseline) and is_binary(candidate):
        interval = paired_proportion_ci(baseline, candidate, confidence=confidence)
        p_value, test = mcnemar_exact(baseline, candidate), "mcnemar"
    else:
        interval = paired_bootstrap_ci(
            differences, confidence=confidence, n_resamples=n_resamples, seed=seed
        )
        p_value = paired_permutation_pvalue(differences, n_resamples=n_resamples, seed=seed)
        test = "permutation"
    change = differences if higher_is_better else -differences
    return MetricComparison(
        metric=name,
        n=n,
        higher_is_better=higher_is_better,
        baseline_mean=float(baseline.mean()),
        candidate_mean=float(candidate.mean()),
        difference=float(differences.mean()),
        ci_low=interval.low,
        ci_high=interval.high,
        p_value=p_value,
        test=test,
        interval=interval.method,
        wins=int(np.sum(change > TIE_TOLERANCE)),
        ties=int(np.sum(np.abs(change) <= TIE_TOLERANCE)),
        losses=int(np.sum(change < -TIE_TOLERANCE)),
    )


def _paired(
    baseline: EvalRun, candidate: EvalRun, metric: str, case_ids: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    base_values = baseline.case_values(metric)
    cand_values = candidate.case_values(metric)
    ids = [case_id for case_id in case_ids if case_id in base_values and case_id in cand_values]
    return (
        ids,
        np.array([base_values[i] for i in ids], dtype=float),
        np.array([cand_values[i] for i in ids], dtype=float),
    )


def _aggregate_note(
    name: str, compared: MetricComparison, baseline: EvalRun, candidate: EvalRun
) -> str | None:
    """Says so when a metric's headline value is not the mean of its per-case scores."""
    pairs = [
        (baseline.metrics[name].aggregate.value, compared.baseline_mean),
        (candidate.metrics[name].aggregate.value, compared.candidate_mean),
    ]
    known = [(own, mean) for own, mean in pairs if own is not None and mean is not None]
    if len(known) < len(pairs):
        return None
    if all(abs(own - mean) <= 1e-9 * max(1.0, abs(own)) for own, mean in known):
        return None
    return (
        f"{name}: compared as the mean of per-case scores; the runs' own {name} values are "
        f"{pairs[0][0]:.4g} (baseline) and {pairs[1][0]:.4g} (candidate)"
    )


def compare_runs_on(
    metric: str,
    baseline: EvalRun,
    candidate: EvalRun,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> MetricComparison:
    """One metric of `compare_runs`, over the cases both runs share (a leaderboard's column)."""
    in_baseline = baseline.result_by_case()
    shared = [case_id for case_id in candidate.result_by_case() if case_id in in_baseline]
    return _compared(metric, baseline, candidate, shared, confidence, n_resamples, seed)[2]


def _compared(
    name: str,
    baseline: EvalRun,
    candidate: EvalRun,
    case_ids: list[str],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, MetricComparison, list[str]]:
    """The paired values of one metric over `case_ids` and their comparison."""
    summary = candidate.metrics[name]
    ids, base, cand = _paired(baseline, candidate, name, case_ids)
    compared = compare_metric(
        name,
        base,
        cand,
        higher_is_better=summary.higher_is_better,
        binary=summary.binary,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
    return base, cand, compared, ids


def compare_runs(
    baseline: EvalRun,
    candidate: EvalRun,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    top_regressions: int = 5,
) -> Comparison:
    base_results = baseline.result_by_case()
    cand_results = candidate.result_by_case()
    shared = [case_id for case_id in cand_results if case_id in base_results]
    comparison = Comparison(
        suite_name=candidate.suite_name,
        baseline_run_id=baseline.run_id,
        candidate_run_id=candidate.run_id,
        shared_cases=len(shared),
        only_in_baseline=len(set(base_results) - set(cand_results)),
        only_in_candidate=len(set(cand_results) - set(base_results)),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
    if baseline.suite_name != candidate.suite_name:
        comparison.warnings.append(
            f"different suites: {baseline.suite_name!r} vs {candidate.suite_name!r}"
        )
    if baseline.dataset_digest != candidate.dataset_digest:
        comparison.warnings.append("different dataset versions; compared on the shared case ids")
    metric_names = [name for name in candidate.metrics if name in baseline.metrics]
    deltas: list[CaseDelta] = []
    for name in metric_names:
        summary = candidate.metrics[name]
        base, cand, compared, ids = _compared(
            name, baseline, candidate, shared, confidence, n_resamples, seed
        )
        comparison.metrics[name] = compared
        note = _aggregate_note(name, compared, baseline, candidate)
        if note:
            comparison.notes.append(note)
        if summary.scale is None:
            continue  # latency and cost: not per-case quality, no regressed cases to show
        change = (cand - base) if summary.higher_is_better else (base - cand)
        for index in np.flatnonzero(change < -TIE_TOLERANCE):
            case_id = ids[index]
            deltas.append(
                CaseDelta(
                    case_id=case_id,
                    metric=name,
                    baseline_value=float(base[index]),
                    candidate_value=float(cand[index]),
                    change=float(change[index]) / summary.scale,
                    baseline_output=base_results[case_id].outputs[0],
                    candidate_output=cand_results[case_id].outputs[0],
                )
            )
    deltas.sort(key=lambda delta: delta.change)
    comparison.regressions = deltas[:top_regressions]

    for slice_name, slice_summary in candidate.slices.items():
        spec = slice_summary.spec
        members = [i for i in shared if spec.contains(cand_results[i].tags)]
        result = SliceComparison(spec=spec)
        for name in metric_names:
            result.metrics[name] = _compared(
                name, baseline, candidate, members, confidence, n_resamples, seed
            )[2]
        comparison.slices[slice_name] = result
    return comparison
