"""Runs a suite against an OpenAI-compatible endpoint, through a generation cache.

Generations run concurrently (bounded), retry with backoff, time out, and record tokens,
latency and, when streamed, time to first token. Each finished generation goes to the sink at
once, so a run that fails midway keeps its work; pass that run (or the sink's records) as
`resume` to finish it. A second run on the same cache identity generates nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from evalhub.eval.cache import GenerationCache, generation_key
from evalhub.eval.record import (
    CaseResult,
    EvalRun,
    GenerationRecord,
    Score,
    TargetInfo,
    utc_now,
)
from evalhub.eval.scoring import score_cases, score_run
from evalhub.eval.suite import Suite
from evalhub.sampling import SamplingParams


class Target(BaseModel):
    """An OpenAI-compatible endpoint and model. The key is never written into a run."""

    base_url: str
    model: str
    api_key: SecretStr = Field(default=SecretStr("EMPTY"), exclude=True, repr=False)
    cache_identity: str | None = Field(
        default=None,
        description="What the model is, for the cache: a registry version digest; "
        "defaults to base_url + model for external endpoints.",
    )

    @property
    def identity(self) -> str:
        return self.cache_identity or f"{self.base_url.rstrip('/')}#{self.model}"

    def info(self) -> TargetInfo:
        return TargetInfo(base_url=self.base_url, model=self.model, cache_identity=self.identity)


class RunOptions(BaseModel):
    """How a run generates; bounded, since the API takes them from callers. Never secrets."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=8, ge=1, le=64)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=3, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0, le=60)
    stream: bool = False
    no_cache: bool = Field(default=False, description="Neither read nor write the cache.")
    refresh: bool = Field(default=False, description="Generate again and overwrite the cache.")


@dataclass(frozen=True)
class Progress:
    phase: str  # "generate" or "score"
    done: int
    total: int
    cached: int = 0


ProgressCallback = Callable[[Progress], None]


class ResultSink(Protocol):
    """Receives each generation as it finishes, then the run once it ends (completed or not)."""

    def on_generation(self, run: EvalRun, record: GenerationRecord) -> None: ...

    def on_finish(self, run: EvalRun) -> None: ...


class JsonlSink:
    """Appends generations to `<dir>/<run_id>.generations.jsonl`; writes `<run_id>.json` at the end."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def generations_path(self, run_id: str) -> Path:
        return self.directory / f"{run_id}.generations.jsonl"

    def on_generation(self, run: EvalRun, record: GenerationRecord) -> None:
        with self.generations_path(run.run_id).open("a", encoding="utf-8") as file:
            file.write(record.model_dump_json() + "\n")

    def on_finish(self, run: EvalRun) -> None:
        (self.directory / f"{run.run_id}.json").write_text(run.model_dump_json(indent=2))

    def load_generations(self, run_id: str) -> list[GenerationRecord]:
        path = self.generations_path(run_id)
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [GenerationRecord.model_validate_json(line) for line in lines if line.strip()]


class GenerationError(RuntimeError):
    """A generation that failed after its retries."""


def _retryable() -> tuple[type[BaseException], ...]:
    import openai

    return (
        openai.APIConnectionError,
        openai.APITimeoutError,
        openai.RateLimitError,
        openai.InternalServerError,
        asyncio.TimeoutError,
    )


def _request(model: str, messages: list[dict[str, Any]], sampling: SamplingParams) -> dict:
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        request["seed"] = sampling.seed
    if sampling.stop:
        request["stop"] = list(sampling.stop)
    if sampling.top_p is not None:
        request["top_p"] = sampling.top_p
    return request


async def _call_once(client: Any, request: dict[str, Any], stream: bool) -> dict[str, Any]:
    started = time.perf_counter()
    if not stream:
        response = await client.chat.completions.create(**request)
        latency = time.perf_counter() - started
        usage = response.usage
        choice = response.choices[0]
        return {
            "output": choice.message.content or "",
            "finish_reason": choice.finish_reason,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "latency_s": latency,
            "ttft_s": None,
            "model": response.model or request["model"],
        }
    stream_response = await client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    parts: list[str] = []
    first_token: float | None = None
    finish_reason = model = None
    prompt_tokens = completion_tokens = None
    async for chunk in stream_response:
        model = chunk.model or model
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
            completion_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                if first_token is None:
                    first_token = time.perf_counter() - started
                parts.append(choice.delta.content)
            finish_reason = choice.finish_reason or finish_reason
    return {
        "output": "".join(parts),
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": time.perf_counter() - started,
        "ttft_s": first_token,
        "model": model or request["model"],
    }


async def generate(client: Any, request: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """One generation with a timeout and retries with exponential backoff."""
    retryable = _retryable()
    for attempt in range(options.max_retries + 1):
        try:
            return await asyncio.wait_for(
                _call_once(client, request, options.stream), timeout=options.timeout_s
            )
        except retryable as error:
            if attempt == options.max_retries:
                raise GenerationError(
                    f"{type(error).__name__} after {attempt + 1} attempts: {error}"
                ) from error
            await asyncio.sleep(options.backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def _resumed_records(resume: EvalRun | Iterable[GenerationRecord] | None) -> list[GenerationRecord]:
    if resume is None:
        return []
    if isinstance(resume, EvalRun):
        return [g for result in resume.results for g in result.generations]
    return list(resume)


async def arun_suite(
    suite: Suite,
    target: Target,
    *,
    cache: GenerationCache | None = None,
    options: RunOptions | None = None,
    sink: ResultSink | None = None,
    progress: ProgressCallback | None = None,
    resume: EvalRun | Iterable[GenerationRecord] | None = None,
    baseline: EvalRun | None = None,
    metric_runtime: dict[str, dict[str, Any]] | None = None,
    client: Any = None,
    run_id: str | None = None,
) -> EvalRun:
    """Generate (or fetch from cache) every case x repeat, then score. Never raises for a failed
    generation: the returned run has status "failed", the reason, and everything finished."""
    options = options or RunOptions()
    metrics = suite.build_metrics(metric_runtime)
    if isinstance(resume, EvalRun):
        if (resume.suite_digest, resume.dataset_digest) != (suite.digest, suite.dataset_digest):
            raise ValueError("cannot resume: the run used a different suite or dataset version")
        run_id = run_id or resume.run_id
    run = new_run(suite, target, run_id)
    await agenerate(
        run, suite, target, cache=cache, options=options, sink=sink, progress=progress,
        resume=resume, client=client,
    )  # fmt: skip
    if run.status != "failed":
        if progress is not None:
            progress(Progress("score", 0, len(metrics)))
        finish_scoring(run, lambda: score_run(run, suite, metrics, baseline))
        if progress is not None:
            progress(Progress("score", len(metrics), len(metrics)))
    run.finished_at = utc_now()
    if sink is not None:
        sink.on_finish(run)
    return run


def finish_scoring(run: EvalRun, score: Callable[[], object]) -> None:
    """Runs `score` on the generated run: the run is then completed, or failed with why scoring
    failed (a metric's error must not lose the generations)."""
    try:
        score()
        run.status = "completed"
    except Exception as error:
        run.status = "failed"
        run.error = f"scoring failed: {type(error).__name__}: {error}"


def new_run(suite: Suite, target: Target, run_id: str | None = None) -> EvalRun:
    """A run of `suite` on `target`, before any generation."""
    config = suite.config
    return EvalRun(
        run_id=run_id or uuid.uuid4().hex,
        suite_name=config.name,
        suite_version=config.version,
        suite_digest=suite.digest,
        dataset_ref=suite.dataset_ref,
        dataset_digest=suite.dataset_digest,
        target=target.info(),
        sampling=config.sampling,
        repeats=config.repeats,
    )


async def agenerate(
    run: EvalRun,
    suite: Suite,
    target: Target,
    *,
    cache: GenerationCache | None = None,
    options: RunOptions | None = None,
    sink: ResultSink | None = None,
    progress: ProgressCallback | None = None,
    resume: EvalRun | Iterable[GenerationRecord] | None = None,
    client: Any = None,
) -> EvalRun:
    """Generates (or fetches from cache) what `resume` lacks of every case x repeat into
    `run.results`; a generation that fails after its retries sets the run "failed", with why."""
    options = options or RunOptions()
    config = suite.config
    done: dict[tuple[str, int], GenerationRecord] = {
        (record.case_id, record.repeat): record for record in _resumed_records(resume)
    }
    work = [
        (case, repeat)
        for case in suite.cases
        for repeat in range(config.repeats)
        if (case.id, repeat) not in done
    ]
    total = len(suite.cases) * config.repeats
    counts = {"done": len(done), "cached": 0}
    failure: list[str] = []
    use_cache = cache is not None and not options.no_cache

    if client is None and work:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            base_url=target.base_url,
            api_key=target.api_key.get_secret_value(),
            max_retries=0,
            timeout=options.timeout_s,
        )
    semaphore = asyncio.Semaphore(options.concurrency)

    def finished(record: GenerationRecord) -> None:
        done[(record.case_id, record.repeat)] = record
        counts["done"] += 1
        counts["cached"] += record.cached
        if sink is not None:
            sink.on_generation(run, record)
        if progress is not None:
            progress(Progress("generate", counts["done"], total, counts["cached"]))

    async def one(case_id: str, repeat: int, messages: list[dict[str, Any]]) -> None:
        key = generation_key(target.identity, messages, config.sampling, repeat)
        if use_cache and not options.refresh:
            hit = cache.get(key)  # type: ignore[union-attr]
            if hit is not None:
                finished(
                    GenerationRecord.model_validate(
                        {**hit, "case_id": case_id, "repeat": repeat, "cached": True}
                    )
                )
                return
        async with semaphore:
            if failure:
                return  # the run has failed; do not start new work
            try:
                answer = await generate(
                    client, _request(target.model, messages, config.sampling), options
                )
            except Exception as error:
                failure.append(f"case {case_id!r} repeat {repeat}: {error}")
                return
        record = GenerationRecord(case_id=case_id, repeat=repeat, key=key, **answer)
        if use_cache:
            cache.put(key, record.model_dump(mode="json", exclude={"case_id", "repeat", "cached"}))  # type: ignore[union-attr]
        finished(record)

    if progress is not None:
        progress(Progress("generate", counts["done"], total))
    await asyncio.gather(*(one(case.id, repeat, suite.messages_for(case)) for case, repeat in work))
    if client is not None and hasattr(client, "close") and work:
        await client.close()

    results: dict[str, CaseResult] = {}
    for case in suite.cases:
        generations = [done[(case.id, r)] for r in range(config.repeats) if (case.id, r) in done]
        if generations:
            results[case.id] = CaseResult(case_id=case.id, tags=case.tags, generations=generations)
    run.results = list(results.values())
    if failure:
        run.status = "failed"
        run.error = f"{len(failure)} generation(s) failed; first: {failure[0]}"
    return run


@dataclass
class CasesOutcome:
    """A batch of cases generated and scored, not aggregated: the results in the suite's order,
    each metric's generation scores in the results' order, or why the batch failed."""

    results: list[CaseResult]
    scores: dict[str, list[Score]]
    error: str | None = None


def run_cases(
    suite: Suite,
    target: Target,
    *,
    options: RunOptions,
    resume: Iterable[GenerationRecord] = (),
    metric_runtime: dict[str, dict[str, Any]] | None = None,
) -> CasesOutcome:
    """Generates what `resume` lacks of `suite.cases` and scores them as `arun_suite` does,
    without a cache; whoever splits a run into such batches aggregates their scores
    (`summarize_run`). Everything it needs travels in its arguments, so it runs anywhere."""
    metrics = suite.build_metrics(metric_runtime)
    run = asyncio.run(
        agenerate(new_run(suite, target), suite, target, options=options, resume=resume)
    )
    if run.status == "failed":
        return CasesOutcome(run.results, {}, run.error)
    try:
        scores = score_cases(run.results, suite, metrics)
    except Exception as error:
        return CasesOutcome(run.results, {}, f"scoring failed: {type(error).__name__}: {error}")
    return CasesOutcome(run.results, scores)


def run_suite(suite: Suite, target: Target, **kwargs: Any) -> EvalRun:
    """`arun_suite` for callers without an event loop (the CLI, tests)."""
    return asyncio.run(arun_suite(suite, target, **kwargs))


def save_run(run: EvalRun, path: str | Path) -> None:
    Path(path).write_text(run.model_dump_json(indent=2), encoding="utf-8")


def load_run(path: str | Path) -> EvalRun:
    return EvalRun.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
