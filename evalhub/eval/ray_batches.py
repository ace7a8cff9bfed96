"""Evaluation runs with executor "ray": the suite's cases split into batches, one Ray task each.

Each task runs `run_cases` on its batch: it generates the batch's answers against the run's
target and scores them with the suite's metrics, as the local runner does, and returns the case
results with their generation scores. The handler stays in charge: it fetches what the
generation cache already holds and what a resumed run already stored before sending anything,
stores each finished batch's generations (the run is resumable batch by batch), reports each
batch as a job event, and aggregates the whole run (`summarize_run`) as a local run does.

Tasks get the suite and its cases by value and no cache: they need neither the server's disk nor
its database. Cancelling the job cancels the outstanding tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from evalhub.eval.cache import GenerationCache, generation_key
from evalhub.eval.record import CaseResult, EvalRun, GenerationRecord, Score, utc_now
from evalhub.eval.runner import (
    CasesOutcome,
    Progress,
    ResultSink,
    RunOptions,
    Target,
    finish_scoring,
    new_run,
    run_cases,
)
from evalhub.eval.scoring import summarize_run
from evalhub.eval.suite import Suite
from evalhub.jobs.ray_executor import connected
from evalhub.jobs.worker import JobCancelled, JobContext

WAIT_SECONDS = 0.5


def run_batch(
    suite: Suite,
    target: Target,
    options: RunOptions,
    resume: list[GenerationRecord],
    metric_runtime: dict[str, dict[str, Any]],
) -> tuple[CasesOutcome, dict[str, Any]]:
    """On a Ray worker: the batch's outcome, and where it ran."""
    import ray

    outcome = run_cases(
        suite, target, options=options, resume=resume, metric_runtime=metric_runtime
    )
    return outcome, {"node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}


def batches(suite: Suite, size: int) -> list[Suite]:
    """The suite split into suites of at most `size` consecutive cases, in order."""
    return [
        suite.model_copy(update={"cases": suite.cases[start : start + size]})
        for start in range(0, len(suite.cases), size)
    ]


def known_generations(
    suite: Suite,
    target: Target,
    options: RunOptions,
    cache: GenerationCache | None,
    stored: list[GenerationRecord],
) -> tuple[list[GenerationRecord], list[GenerationRecord]]:
    """What no task needs to generate: the generations the run stored already, and the cache's
    hits for the rest (marked cached, as the local runner marks them)."""
    done = {(record.case_id, record.repeat) for record in stored}
    hits: list[GenerationRecord] = []
    if cache is None or options.no_cache or options.refresh:
        return stored, hits
    for case in suite.cases:
        messages = suite.messages_for(case)
        for repeat in range(suite.config.repeats):
            if (case.id, repeat) in done:
                continue
            key = generation_key(target.identity, messages, suite.config.sampling, repeat)
            hit = cache.get(key)
            if hit is not None:
                hits.append(
                    GenerationRecord.model_validate(
                        {**hit, "case_id": case.id, "repeat": repeat, "cached": True}
                    )
                )
    return stored, hits


def run_on_ray(
    context: JobContext,
    address: str | None,
    suite: Suite,
    target: Target,
    *,
    options: RunOptions,
    batch_size: int,
    cache: GenerationCache | None,
    sink: ResultSink,
    progress: Callable[[Progress], None],
    stored: list[GenerationRecord],
    run_id: str,
    metric_runtime: dict[str, dict[str, Any]],
) -> EvalRun:
    """Runs `suite` on `target` as Ray tasks of `batch_size` cases on the cluster at `address`;
    the run as `arun_suite` would return it (and hand it to `sink`)."""
    run = new_run(suite, target, run_id)
    metrics = suite.build_metrics(metric_runtime)
    stored, hits = known_generations(suite, target, options, cache, stored)
    for record in hits:
        sink.on_generation(run, record)
    known: dict[str, list[GenerationRecord]] = {}
    for record in [*stored, *hits]:
        known.setdefault(record.case_id, []).append(record)
    parts = batches(suite, batch_size)
    total = len(suite.cases) * suite.config.repeats
    # The judge's cache is the server's database: tasks judge without it.
    runtime = {
        name: {k: v for k, v in opts.items() if k != "cache"}
        for name, opts in metric_runtime.items()
    }
    outcomes: dict[int, CasesOutcome] = {}
    with connected(address) as ray:
        task = ray.remote(num_cpus=1, max_retries=0)(run_batch)
        refs = {
            task.remote(
                part,
                target,
                options,
                [record for case in part.cases for record in known.get(case.id, [])],
                runtime,
            ): index
            for index, part in enumerate(parts)
        }
        context.event(
            f"Running {len(suite.cases)} cases as {len(parts)} Ray tasks of up to {batch_size} "
            f"on the Ray cluster at {address}",
            data={"batches": len(parts), "batch_size": batch_size},
        )
        generated = {"done": len(stored) + len(hits), "cached": len(hits)}
        pending = list(refs)
        try:
            while pending:
                context.check_cancelled()
                ready, pending = ray.wait(pending, num_returns=1, timeout=WAIT_SECONDS)
                for ref in ready:
                    index = refs[ref]
                    outcome, where = ray.get(ref)
                    outcomes[index] = outcome
                    _store(outcome.results, known, run, sink, cache, options, generated)
                    context.event(
                        f"batch {index + 1} of {len(parts)} ({len(parts[index].cases)} cases) "
                        f"{'failed' if outcome.error else 'done'} on Ray node {where['node_ip']} "
                        f"(pid {where['pid']})",
                        level="error" if outcome.error else "info",
                        data={"batch": index + 1, "batches": len(parts), **where},
                    )
                    progress(Progress("generate", generated["done"], total, generated["cached"]))
                    if outcome.error:
                        raise _BatchFailed(outcome.error)
        except (JobCancelled, _BatchFailed) as stop:
            for ref in pending:
                ray.cancel(ref, force=True)
            if isinstance(stop, JobCancelled):
                raise
            run.status, run.error = "failed", str(stop)
    ordered = [outcomes[index] for index in sorted(outcomes)]
    run.results = [result for outcome in ordered for result in outcome.results]
    if run.status != "failed":
        scores: dict[str, list[Score]] = {key: [] for key in metrics}
        for outcome in ordered:
            for key in metrics:
                scores[key].extend(outcome.scores[key])
        finish_scoring(run, lambda: summarize_run(run, suite, metrics, scores))
    run.finished_at = utc_now()
    sink.on_finish(run)
    return run


class _BatchFailed(Exception):
    """A batch came back with an error; the run fails with it."""


def _store(
    results: Sequence[CaseResult],
    known: dict[str, list[GenerationRecord]],
    run: EvalRun,
    sink: ResultSink,
    cache: GenerationCache | None,
    options: RunOptions,
    generated: dict[str, int],
) -> None:
    """Hands a batch's new generations to the sink and the cache, as the local runner does."""
    for result in results:
        had = {record.repeat for record in known.get(result.case_id, [])}
        for record in result.generations:
            if record.repeat in had:
                continue
            if cache is not None and not options.no_cache:
                cache.put(
                    record.key,
                    record.model_dump(mode="json", exclude={"case_id", "repeat", "cached"}),
                )
            sink.on_generation(run, record)
            generated["done"] += 1
