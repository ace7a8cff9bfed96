"""Scores a run's generations: per case (repeats averaged), per metric, per slice, overall."""

from __future__ import annotations

from dataclasses import dataclass

from evalhub.eval.case import Case
from evalhub.eval.metrics import Metric, ScoringContext
from evalhub.eval.record import (
    CaseResult,
    EvalRun,
    GenerationRecord,
    MetricSummary,
    Score,
    SliceSummary,
)
from evalhub.eval.suite import Suite


def combine_repeats(scores: list[Score]) -> Score:
    """One score per case: the mean of its repeats' values; the repeats are kept in details."""
    if len(scores) == 1:
        return scores[0]
    values = [score.value for score in scores if score.value is not None]
    mean = sum(values) / len(values) if values else None
    explanation = f"mean of {len(scores)} repeats; first: {scores[0].explanation}"
    return Score(
        value=mean,
        explanation=explanation,
        details={"repeats": [score.value for score in scores]},
    )


def passes(value: float | None, threshold: float | None, higher_is_better: bool) -> bool | None:
    if threshold is None:
        return None
    if value is None:
        return False
    return value >= threshold if higher_is_better else value <= threshold


def score_run(
    run: EvalRun,
    suite: Suite,
    metrics: dict[str, Metric],
    baseline: EvalRun | None = None,
) -> EvalRun:
    """Fill in scores, aggregates, slices, pass/fail and the weighted overall score."""
    scores = score_cases(run.results, suite, metrics, baseline)
    return summarize_run(run, suite, metrics, scores, baseline)


@dataclass
class _Flat:
    """A run's generations in order, with their outputs, cases and the result each belongs to."""

    outputs: list[str]
    cases: list[Case]
    records: list[GenerationRecord]
    owners: list[int]


def _flatten(results: list[CaseResult], suite: Suite) -> _Flat:
    cases = {case.id: case for case in suite.cases}
    flat = _Flat([], [], [], [])
    for index, result in enumerate(results):
        for generation in result.generations:
            flat.outputs.append(generation.output)
            flat.cases.append(cases[result.case_id])
            flat.records.append(generation)
            flat.owners.append(index)
    return flat


def _baseline_outputs(baseline: EvalRun | None) -> dict[str, str]:
    if baseline is None:
        return {}
    return {r.case_id: r.outputs[0] for r in baseline.results if r.generations}


def score_cases(
    results: list[CaseResult],
    suite: Suite,
    metrics: dict[str, Metric],
    baseline: EvalRun | None = None,
) -> dict[str, list[Score]]:
    """Scores every generation of `results` and sets each result's score (repeats averaged).

    Returns each metric's generation scores in the order of `results`' generations: what the
    aggregates take. Cases score independently, so a batch of cases scores as the whole run does.
    """
    flat = _flatten(results, suite)
    context = ScoringContext(records=flat.records, baseline_outputs=_baseline_outputs(baseline))
    flat_scores: dict[str, list[Score]] = {}
    for key, metric in metrics.items():
        scores = metric.score(flat.outputs, flat.cases, context)
        flat_scores[key] = scores
        per_result: list[list[Score]] = [[] for _ in results]
        for owner, score in zip(flat.owners, scores, strict=True):
            per_result[owner].append(score)
        for result, group in zip(results, per_result, strict=True):
            if group:
                result.scores[key] = combine_repeats(group)
    return flat_scores


def summarize_run(
    run: EvalRun,
    suite: Suite,
    metrics: dict[str, Metric],
    flat_scores: dict[str, list[Score]],
    baseline: EvalRun | None = None,
) -> EvalRun:
    """Aggregates, slices, pass/fail and the overall score from the generation scores that
    `score_cases` returned for `run.results`."""
    flat = _flatten(run.results, suite)
    baseline_outputs = _baseline_outputs(baseline)
    context = ScoringContext(records=flat.records, baseline_outputs=baseline_outputs)
    specs = {spec.key: spec for spec in suite.config.metrics}
    for key, metric in metrics.items():
        aggregate = metric.aggregate(flat_scores[key], flat.outputs, flat.cases, context)
        spec = specs[key]
        run.metrics[key] = MetricSummary(
            spec=spec,
            binary=metric.binary,
            higher_is_better=metric.higher_is_better,
            scale=metric.scale,
            aggregate=aggregate,
            passed=passes(aggregate.value, spec.threshold, metric.higher_is_better),
        )

    for slice_spec in suite.config.slices:
        members = [i for i, case in enumerate(flat.cases) if slice_spec.contains(case.tags)]
        summary = SliceSummary(spec=slice_spec, count=len({flat.cases[i].id for i in members}))
        for key, metric in metrics.items():
            sub_context = ScoringContext(
                records=[flat.records[i] for i in members], baseline_outputs=baseline_outputs
            )
            summary.metrics[key] = metric.aggregate(
                [flat_scores[key][i] for i in members],
                [flat.outputs[i] for i in members],
                [flat.cases[i] for i in members],
                sub_context,
            )
        run.slices[slice_spec.name] = summary

    run.overall_score = overall_score(run.metrics)
    verdicts = [summary.passed for summary in run.metrics.values() if summary.passed is not None]
    run.passed = all(verdicts)
    return run


def overall_score(metrics: dict[str, MetricSummary]) -> float | None:
    """Weighted mean of metric values divided by their scale; unscaled metrics do not weigh in."""
    total = weights = 0.0
    for summary in metrics.values():
        value = summary.aggregate.value
        if summary.scale is None or value is None or summary.spec.weight == 0:
            continue
        normalised = value / summary.scale
        if not summary.higher_is_better:
            normalised = 1 - normalised
        total += summary.spec.weight * normalised
        weights += summary.spec.weight
    return total / weights if weights else None


def results_in_order(suite: Suite, results: dict[str, CaseResult]) -> list[CaseResult]:
    return [results[case.id] for case in suite.cases if case.id in results]
