"""Error analysis: a run's failing (or, against a baseline, regressed) cases grouped into patterns
a user can act on, and a group exported as new training rows or eval cases.

Three groupings: by slice (the cases' tags), by metric, and by meaning: the prompts' embeddings
(the offline MiniLM) clustered with k-means, each cluster with its size, failure rate, the words
that set it apart, and a few failing examples. A case fails when its score on the chosen metric is
below `below` (a share of the metric's scale); with a baseline run, when it scores lower than
there.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evalhub.eval.case import Case
from evalhub.eval.metrics.semantic_similarity import default_model_path, embed
from evalhub.eval.record import CaseResult, EvalRun
from evalhub.eval.service import EvalService
from evalhub.eval.suite import Suite
from registry.entities import DatasetFormat, DatasetVersion
from registry.errors import invalid

EXAMPLES = 3
WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]{2,}")


class ErrorQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: str | None = Field(default=None, max_length=64, description="regressions against")
    metric: str | None = Field(default=None, max_length=128, description="default: the first")
    below: float = Field(
        default=0.5, description="a score below this share of its scale fails (with no baseline)"
    )
    clusters: int = Field(default=4, ge=1, le=50, description="k-means clusters of the prompts")


class Example(BaseModel):
    case_id: str
    prompt: str
    output: str
    expected: str
    score: float | None
    baseline_score: float | None = None


class Group(BaseModel):
    name: str
    cases: int
    failures: int
    failure_rate: float
    terms: list[str] = Field(default_factory=list, description="clusters: their distinctive words")
    examples: list[Example]


class MetricFailures(BaseModel):
    metric: str
    cases: int
    failures: int


class ErrorReport(BaseModel):
    run: str
    baseline: str | None
    metric: str
    rule: str = Field(description="what counts as a failure")
    cases: int
    failures: int
    by_slice: list[Group]
    by_metric: list[MetricFailures]
    clusters: list[Group]


class ErrorExport(ErrorQuery):
    group: str = Field(
        max_length=200, description="slice:TAG, cluster:N (as the report numbers them) or all"
    )
    as_: Literal["chat", "eval"] = Field(alias="as", description="training rows or eval cases")
    dataset: str = Field(max_length=128, description="registered (created if missing)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ExportedErrors(BaseModel):
    rows: int
    created: bool
    version: DatasetVersion


class _Analysis:
    """The run's cases with prompts, scores and failure flags, and the report's groups."""

    def __init__(self, evals: EvalService, run_id: str, query: ErrorQuery) -> None:
        run = evals.store.run(run_id)
        suite = evals.suite(run_id)
        if suite is None:
            raise invalid(
                f"eval run {run_id} was imported and holds no case inputs; analyse a run that "
                "evalhub ran (evalhub eval run SUITE --model REF)"
            )
        self.run, self.suite, self.query = run, suite, query
        self.metric = query.metric or _default_metric(run)
        if self.metric not in run.metrics:
            raise invalid(
                f"run {run_id} has no metric {self.metric!r}; it has {sorted(run.metrics)}"
            )
        cases = {case.id: case for case in suite.cases}
        results = [r for r in run.results if r.case_id in cases and r.generations]
        self.baseline_scores: dict[str, float | None] = {}
        if query.baseline is not None:
            other = evals.store.run(query.baseline)
            self.baseline_scores = {r.case_id: _score(r, self.metric) for r in other.results}
            results = [r for r in results if r.case_id in self.baseline_scores]
            if not results:
                raise invalid(f"runs {run_id} and {query.baseline} share no cases")
        self.results = results
        self.cases = [cases[r.case_id] for r in results]
        self.failed = [self._fails(r) for r in results]

    def _fails(self, result: CaseResult) -> bool:
        score = _score(result, self.metric)
        if self.query.baseline is not None:
            before = self.baseline_scores.get(result.case_id)
            return score is not None and before is not None and score < before
        return score is None or score < self.query.below * self.scale(self.metric)

    def scale(self, metric: str) -> float:
        """`below` is a share of the metric's scale (chrF scores 0-100, exact match 0-1)."""
        return self.run.metrics[metric].scale or 1.0

    @property
    def rule(self) -> str:
        if self.query.baseline is not None:
            return f"{self.metric} lower than in {self.query.baseline}"
        cut = self.query.below * self.scale(self.metric)
        return f"{self.metric} below {cut:g} (or unscored)"

    def prompt(self, case: Case) -> str:
        messages = self.suite.messages_for(case)
        users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
        return "\n".join(users) or str(messages[-1].get("content", ""))

    def group(self, name: str, members: list[int], terms: list[str] | None = None) -> Group:
        failing = [i for i in members if self.failed[i]]
        return Group(
            name=name,
            cases=len(members),
            failures=len(failing),
            failure_rate=len(failing) / len(members) if members else 0.0,
            terms=terms or [],
            examples=[self.example(i) for i in failing[:EXAMPLES]],
        )

    def example(self, index: int) -> Example:
        result, case = self.results[index], self.cases[index]
        return Example(
            case_id=result.case_id,
            prompt=self.prompt(case),
            output=result.generations[0].output,
            expected=case.expected_text,
            score=_score(result, self.metric),
            baseline_score=self.baseline_scores.get(result.case_id),
        )

    def slices(self) -> dict[str, list[int]]:
        members: dict[str, list[int]] = {}
        for index, result in enumerate(self.results):
            for tag in result.tags or ["(untagged)"]:
                members.setdefault(tag, []).append(index)
        return members

    @cached_property
    def clusters(self) -> list[tuple[list[int], list[str]]]:
        """k-means over the prompts' embeddings: each cluster's members and distinctive words,
        most failures first (the order that numbers them cluster:1, cluster:2, ...)."""
        from sklearn.cluster import KMeans

        prompts = [self.prompt(case) for case in self.cases]
        k = min(self.query.clusters, len(prompts))
        if k <= 1:
            return [(list(range(len(prompts))), _terms(prompts, prompts))]
        vectors = embed(prompts, default_model_path())
        labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(vectors)
        groups = []
        for cluster in range(k):
            members = [i for i, label in enumerate(labels) if label == cluster]
            groups.append((members, _terms([prompts[i] for i in members], prompts)))
        failures = [sum(self.failed[i] for i in members) for members, _ in groups]
        order = sorted(
            range(k), key=lambda c: (-failures[c], -failures[c] / max(len(groups[c][0]), 1))
        )
        return [groups[c] for c in order]

    def report(self) -> ErrorReport:
        slices = [self.group(f"slice:{tag}", members) for tag, members in self.slices().items()]
        clustered = [
            self.group(f"cluster:{number}", members, terms)
            for number, (members, terms) in enumerate(self.clusters, start=1)
        ]
        by_metric = [
            MetricFailures(
                metric=name,
                cases=sum(1 for r in self.results if _score(r, name) is not None),
                failures=sum(
                    1
                    for r in self.results
                    if (s := _score(r, name)) is not None
                    and s < self.query.below * self.scale(name)
                ),
            )
            for name, summary in self.run.metrics.items()
            if summary.higher_is_better  # a latency or a cost has no failing score
        ]
        return ErrorReport(
            run=self.run.run_id,
            baseline=self.query.baseline,
            metric=self.metric,
            rule=self.rule,
            cases=len(self.results),
            failures=sum(self.failed),
            by_slice=sorted(slices, key=lambda g: (-g.failure_rate, g.name)),
            by_metric=by_metric,
            clusters=clustered,
        )

    def members(self, group: str) -> list[int]:
        if group == "all":
            return list(range(len(self.results)))
        if group.startswith("slice:"):
            found = self.slices().get(group.removeprefix("slice:"))
            if found is None:
                raise invalid(f"no slice {group!r}; slices: {sorted(self.slices())}")
            return found
        if group.startswith("cluster:"):
            number = group.removeprefix("cluster:")
            if not number.isdigit() or not 1 <= int(number) <= len(self.clusters):
                raise invalid(
                    f"no {group!r}: the clusters are cluster:1 to cluster:{len(self.clusters)}"
                )
            return self.clusters[int(number) - 1][0]
        raise invalid("a group is slice:TAG, cluster:N or all")


def analyse(evals: EvalService, run_id: str, query: ErrorQuery) -> ErrorReport:
    return _Analysis(evals, run_id, query).report()


def export_errors(
    evals: EvalService, run_id: str, body: ErrorExport, *, actor: str
) -> ExportedErrors:
    """The group's failing cases as chat rows (prompt, then the reference answer) or eval cases,
    each carrying the run and case it came from, registered as a dataset version."""
    analysis = _Analysis(evals, run_id, body)
    chosen = [i for i in analysis.members(body.group) if analysis.failed[i]]
    if not chosen:
        raise invalid(f"{body.group} has no failing cases in run {run_id}")
    source = {"source_run": run_id, "group": body.group, "rule": analysis.rule}
    with tempfile.TemporaryDirectory(prefix="evalhub-errors-") as work:
        path = Path(work) / f"{body.dataset}.jsonl"
        rows = 0
        with path.open("w", encoding="utf-8") as handle:
            for index in chosen:
                row = _row(analysis.suite, analysis.cases[index], body.as_, source)
                if row is not None:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    rows += 1
        if rows == 0:
            raise invalid(
                f"the failing cases of {body.group} have no reference answers to train on"
            )
        version, created = evals.platform.registry.add_dataset_version(
            body.dataset,
            path,
            format=DatasetFormat(body.as_),
            filename=path.name,
            create=True,
            actor=actor,
        )
    return ExportedErrors(rows=rows, created=created, version=version)


def _row(suite: Suite, case: Case, kind: str, source: dict[str, Any]) -> dict[str, Any] | None:
    metadata = {**case.metadata, **source, "case_id": case.id}
    if kind == "chat":
        if case.expected is None:
            return None
        answer = {"role": "assistant", "content": case.expected_text}
        return {"messages": [*suite.messages_for(case), answer], "metadata": metadata}
    row = case.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    return {**row, "id": case.id, "metadata": metadata}


def _score(result: CaseResult, metric: str) -> float | None:
    score = result.scores.get(metric)
    return score.value if score is not None else None


def _default_metric(run: EvalRun) -> str:
    """The first metric with 0/1 scores (exact match, say), else the first."""
    for name, summary in run.metrics.items():
        if summary.binary:
            return name
    if not run.metrics:
        raise invalid(f"run {run.run_id} has no metrics")
    return next(iter(run.metrics))


def _terms(members: list[str], everything: list[str], most: int = 3) -> list[str]:
    """The words most over-represented in the members against all prompts."""
    inside = Counter(w.lower() for text in members for w in WORD.findall(text))
    overall = Counter(w.lower() for text in everything for w in WORD.findall(text))
    share = len(members) / max(len(everything), 1)
    lift = {w: c / (overall[w] * share) for w, c in inside.items() if c >= 1}
    ranked = sorted(lift, key=lambda w: (-lift[w], -inside[w], w))
    return [w for w in ranked if lift[w] > 1.0][:most] or ranked[:most]
