"""The CI gate: pass when every absolute threshold holds and no metric provably regressed.

A metric regresses when its paired CI of (candidate - baseline) lies wholly on the worse side of
0 and the estimated drop exceeds the margin: the drop is both shown and larger than tolerated.
`require_non_inferiority` asks more: the CI's worse bound must stay within -margin, so that the
candidate shows it is no worse than the margin. With honest intervals that needs large suites
(at 40 cases a 0/1 metric's interval is about +-0.1 even when nothing changed), so it is opt-in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from evalhub.eval.compare import Comparison, compare_runs
from evalhub.eval.record import EvalRun

Decision = Literal["pass", "regression", "error"]
EXIT_CODES: dict[str, int] = {"pass": 0, "regression": 1, "error": 2}


class GatePolicy(BaseModel):
    margin: float = Field(
        default=0.02,
        ge=0,
        description="Largest tolerated drop, as a fraction of each metric's scale "
        "(0.02: two points of a 0-1 metric, two BLEU points).",
    )
    margins: dict[str, float] = Field(
        default_factory=dict,
        description="Per-metric margins in the metric's own units; the only way to gate "
        "unscaled metrics such as latency and cost.",
    )
    confidence: float = Field(default=0.95, gt=0, lt=1)
    n_resamples: int = Field(default=10_000, ge=100)
    seed: int = 0
    require_baseline: bool = False
    require_non_inferiority: bool = Field(
        default=False,
        description="Fail unless the interval rules out a drop beyond the margin, instead of "
        "failing only on a shown drop beyond it.",
    )


class GateCheck(BaseModel):
    suite: str
    metric: str
    kind: Literal["threshold", "regression"]
    passed: bool
    message: str


class SuiteGate(BaseModel):
    suite: str
    candidate_run_id: str
    baseline_run_id: str | None = None
    checks: list[GateCheck] = Field(default_factory=list)
    comparison: Comparison | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.checks)


class GateResult(BaseModel):
    decision: Decision
    reasons: list[str] = Field(default_factory=list)
    suites: list[SuiteGate] = Field(default_factory=list)
    policy: GatePolicy

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]


def _suite_gate(candidate: EvalRun, baseline: EvalRun | None, policy: GatePolicy) -> SuiteGate:
    result = SuiteGate(
        suite=candidate.suite_name,
        candidate_run_id=candidate.run_id,
        baseline_run_id=baseline.run_id if baseline else None,
    )
    for run, role in ((candidate, "candidate"), (baseline, "baseline")):
        if run is not None and run.status != "completed":
            result.error = f"{role} run {run.run_id} is {run.status}: {run.error or 'no reason'}"
            return result
    if baseline is None and policy.require_baseline:
        result.error = "no baseline run, and the policy requires one"
        return result
    for name, summary in candidate.metrics.items():
        if summary.passed is None:
            continue
        sign = ">=" if summary.higher_is_better else "<="
        value = summary.aggregate.value
        shown = "none" if value is None else f"{value:.4g}"
        result.checks.append(
            GateCheck(
                suite=candidate.suite_name,
                metric=name,
                kind="threshold",
                passed=summary.passed,
                message=f"{name} = {shown}, needs {sign} {summary.spec.threshold:.4g}",
            )
        )
    if baseline is None:
        return result
    if baseline.suite_name != candidate.suite_name:
        result.error = (
            f"baseline is suite {baseline.suite_name!r}, candidate {candidate.suite_name!r}"
        )
        return result
    comparison = compare_runs(
        baseline,
        candidate,
        confidence=policy.confidence,
        n_resamples=policy.n_resamples,
        seed=policy.seed,
    )
    result.comparison = comparison
    if comparison.shared_cases == 0:
        result.error = "the baseline and candidate runs share no cases"
        return result
    for name, metric in comparison.metrics.items():
        scale = candidate.metrics[name].scale
        if name in policy.margins:
            margin = policy.margins[name]
        elif scale is not None:
            margin = policy.margin * scale
        else:
            continue  # unscaled (latency, cost): gated only with an explicit margin
        worst = metric.worst_improvement
        if worst is None or metric.difference is None:
            continue
        better = 1 if metric.higher_is_better else -1
        best = max(better * (metric.ci_low or 0.0), better * (metric.ci_high or 0.0))
        change = better * metric.difference
        if policy.require_non_inferiority:
            ok = worst >= -margin
            rule = f"non-inferiority needs the worse bound within -{margin:.4g}"
        else:
            ok = not (best < 0 and change < -margin)
            rule = f"a regression is a shown drop beyond {margin:.4g}"
        pct = round(policy.confidence * 100)
        message = (
            f"{name}: change {metric.difference:+.4g}, {pct}% CI "
            f"[{metric.ci_low:.4g}, {metric.ci_high:.4g}] ({metric.interval}); {rule}"
        )
        result.checks.append(
            GateCheck(
                suite=candidate.suite_name,
                metric=name,
                kind="regression",
                passed=ok,
                message=message,
            )
        )
    return result


def gate(
    pairs: list[tuple[EvalRun, EvalRun | None]], policy: GatePolicy | None = None
) -> GateResult:
    """Gate several suites at once: each pair is (candidate run, baseline run or None)."""
    policy = policy or GatePolicy()
    if not pairs:
        return GateResult(decision="error", reasons=["no runs to gate"], policy=policy)
    suites = [_suite_gate(candidate, baseline, policy) for candidate, baseline in pairs]
    errors = [f"{suite.suite}: {suite.error}" for suite in suites if suite.error]
    if errors:
        return GateResult(decision="error", reasons=errors, suites=suites, policy=policy)
    failed = [
        f"{check.suite}: {check.kind} {check.message}"
        for suite in suites
        for check in suite.checks
        if not check.passed
    ]
    if failed:
        return GateResult(decision="regression", reasons=failed, suites=suites, policy=policy)
    return GateResult(decision="pass", reasons=["all checks passed"], suites=suites, policy=policy)
