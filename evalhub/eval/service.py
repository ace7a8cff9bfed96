"""Evaluation on the platform: start a run as a job, run it resumably, record, compare.

A run's suite and dataset are stored with it, so the job (on any worker) rebuilds exactly what
was validated when it was submitted. Targets are pinned at submission: a registry reference
becomes its exact version, and the cache identity is that version's digest (plus its base's),
never a name, so changed weights never meet stale generations.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, Field, SecretStr

from evalhub.eval.compare import Comparison, compare_runs
from evalhub.eval.metrics import MetricPolicy
from evalhub.eval.ray_batches import run_on_ray
from evalhub.eval.record import EvalRun, GenerationRecord
from evalhub.eval.runner import Progress, RunOptions, Target, run_suite
from evalhub.eval.store import DatabaseCache, EvalRunInfo, EvalStore, new_run_id
from evalhub.eval.suite import Suite, SuiteError, is_file_reference, load_suite
from evalhub.eval.tables import EvalRunRow
from evalhub.jobs.worker import Handler, JobCancelled, JobContext
from evalhub.platform import Platform
from evalhub.settings import Settings
from registry.errors import ErrorCode, RegistryError, invalid

JOB_KIND = "eval"
LINEAGE_RELATION = "evaluated_in"
LINEAGE_KIND = "eval_run"
EXECUTORS = ("local", "ray")


class TargetSpec(BaseModel):
    model: str = Field(
        min_length=1,
        description="A registry reference (name, name/3, name@alias), or with `endpoint` a "
        "model name at that endpoint.",
    )
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL")


class EvalRequest(BaseModel):
    suite: str = Field(min_length=1, description="The suite's YAML text.")
    filename: str = Field(
        default="suite.yaml", max_length=200, description="Shown in problem reports."
    )
    dataset: str | None = Field(
        default=None, description="JSONL text of the dataset file the suite names."
    )
    dataset_ref: str | None = Field(
        default=None,
        description="A registry dataset (name or name/3) for the file the suite names.",
    )
    target: TargetSpec
    options: RunOptions = Field(default_factory=RunOptions)
    executor: str = Field(
        default="local",
        max_length=20,
        description="Where the cases run: in the worker that claims the job (local), or as "
        "Ray tasks of `batch_size` cases on the cluster at the worker's EVALHUB_RAY_ADDRESS (ray).",
    )
    batch_size: int = Field(default=16, ge=1, le=10_000, description="Cases per Ray task.")


class EvalStarted(BaseModel):
    run: EvalRunInfo
    job_id: str


@dataclass(frozen=True)
class ResolvedTarget:
    model: str
    model_version: str | None
    model_digest: str | None
    base_url: str
    endpoint_model: str
    cache_identity: str


# -- suites --------------------------------------------------------------------------------------


def _parsed(suite_text: str) -> dict[str, Any]:
    """The suite's YAML as a mapping, or {} when it is broken (load_suite reports where)."""
    try:
        data = yaml.safe_load(suite_text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _metric_specs(suite_text: str) -> list[dict[str, Any]]:
    metrics = _parsed(suite_text).get("metrics")
    return [spec for spec in metrics if isinstance(spec, dict)] if isinstance(metrics, list) else []


def declared_dataset(suite_text: str) -> str | None:
    value = _parsed(suite_text).get("dataset")
    return value if isinstance(value, str) else None


def metric_runtime(settings: Settings, suite_text: str, cache: Any) -> dict[str, dict[str, Any]]:
    """Options the settings supply to metrics: the judge endpoint and key, the price table.

    The judge key goes only to the configured judge: when a suite names another judge endpoint,
    no key is sent at all.
    """
    judge: dict[str, Any] = {"cache": cache} if cache is not None else {}
    if settings.judge_base_url:
        judge["base_url"] = settings.judge_base_url
    if settings.judge_model:
        judge["model"] = settings.judge_model
    if settings.judge_api_key is not None and _judges_stay_home(settings, suite_text):
        judge["api_key"] = settings.judge_api_key.get_secret_value()
    runtime: dict[str, dict[str, Any]] = {"llm_judge": judge}
    if settings.prices:
        runtime["cost"] = {"prices": settings.prices}
    return runtime


def _judges_stay_home(settings: Settings, suite_text: str) -> bool:
    for spec in _metric_specs(suite_text):
        options = spec.get("options")
        if spec.get("name") != "llm_judge" or not isinstance(options, dict):
            continue
        if options.get("base_url", settings.judge_base_url) != settings.judge_base_url:
            return False
    return True


def refuse_suite_secrets(suite_text: str) -> None:
    for index, spec in enumerate(_metric_specs(suite_text)):
        options = spec.get("options")
        if isinstance(options, dict) and "api_key" in options:
            raise invalid(
                f"metrics.{index}: the judge's API key comes from the server's settings "
                "(EVALHUB_JUDGE_API_KEY), never from a request; remove api_key from the suite"
            )


def load_request_suite(
    platform: Platform,
    suite_text: str,
    *,
    filename: str = "suite.yaml",
    dataset_text: str | None = None,
    dataset_version: str | None = None,
    cache: Any = None,
) -> tuple[Suite, str | None]:
    """Validates a suite sent as text; its dataset comes inline or from the registry, never
    from the server's own files. Returns the suite and the registry dataset version it used
    (`dataset_version` pins it). Raises SuiteError (file and line) or RegistryError."""
    declared = declared_dataset(suite_text)
    supplied = dataset_text is not None or dataset_version is not None
    used = {"version": dataset_version}

    def resolve_dataset(reference: str) -> Path:
        version = platform.registry.resolve_dataset(dataset_version or reference)
        used["version"] = version.ref
        return platform.registry.dataset_path(version.ref)

    # The filename is a label for problem reports: never a path, never `..`.
    name = Path(filename.replace("\\", "/")).name
    if name in ("", ".", ".."):
        name = "suite.yaml"
    with tempfile.TemporaryDirectory(prefix="evalhub-suite-") as work:
        root = Path(work).resolve()
        suite_path = root / name
        suite_path.write_text(suite_text, encoding="utf-8")
        if declared is not None and is_file_reference(declared):
            target = (root / declared).resolve()
            if not target.is_relative_to(root):
                raise invalid(
                    f"the suite's dataset {declared!r} points outside the suite's directory; "
                    "name a file beside it (e.g. cases.jsonl) and send its content"
                )
            if not supplied:
                raise invalid(
                    f"the suite names the file {declared!r}: send its content as `dataset` "
                    "(or a registry dataset as `dataset_ref`)"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            if dataset_text is not None:
                target.write_text(dataset_text, encoding="utf-8")
            else:
                assert dataset_version is not None
                target.write_bytes(platform.registry.dataset_path(dataset_version).read_bytes())
        runtime = metric_runtime(platform.settings, suite_text, cache)
        try:
            suite = load_suite(
                suite_path,
                resolve_dataset=resolve_dataset,
                metric_runtime=runtime,
                metric_policy=MetricPolicy.for_server(platform.settings.metric_modules),
            )
        except SuiteError as error:
            for problem in error.problems:
                problem.file = _relative(problem.file, root)
            raise
    return suite, used["version"]


def _relative(file: str, root: Path) -> str:
    try:
        return str(Path(file).resolve().relative_to(root))
    except ValueError:
        return file


def suite_problems(error: SuiteError) -> RegistryError:
    lines = "\n".join(str(problem) for problem in error.problems)
    return invalid(f"the suite cannot run:\n{lines}")


# -- targets -------------------------------------------------------------------------------------


def check_endpoint(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid(f"endpoint {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise invalid("put no credentials in the endpoint URL")
    return url.rstrip("/")


def resolve_target(platform: Platform, spec: TargetSpec) -> ResolvedTarget:
    if spec.endpoint:
        base_url = check_endpoint(spec.endpoint)
        return ResolvedTarget(
            model=spec.model,
            model_version=None,
            model_digest=None,
            base_url=base_url,
            endpoint_model=spec.model,
            cache_identity=f"{base_url}#{spec.model}",
        )
    version = platform.registry.resolve(spec.model)
    serving_url = platform.settings.serving_url
    if not serving_url:
        raise invalid(
            f"{spec.model} is {version.ref}, but nothing here serves registry models: run the "
            "eval against a server (`evalhub serve`, EVALHUB_URL), whose gateway serves them, "
            "or pass --endpoint URL (and --model as the model name at that endpoint), or set "
            "EVALHUB_SERVING_URL"
        )
    # An adapter's answers depend on its base's weights too.
    identity = version.digest + (f"+{version.base_digest}" if version.base_digest else "")
    return ResolvedTarget(
        model=spec.model,
        model_version=version.ref,
        model_digest=version.digest,
        base_url=check_endpoint(serving_url),
        endpoint_model=version.ref,
        cache_identity=identity,
    )


# -- the service ---------------------------------------------------------------------------------


class EvalRunFailed(RuntimeError):
    """The run finished as failed; it is stored with its reason already."""


class EvalService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.store = EvalStore(platform.engine)

    def start(self, request: EvalRequest, *, actor: str) -> EvalStarted:
        """Validates everything, then stores the run and queues its job; bad input stores nothing."""
        refuse_suite_secrets(request.suite)
        if request.executor not in EXECUTORS:
            raise invalid(f"executor {request.executor!r}: use 'local' or 'ray'")
        if request.dataset is not None and request.dataset_ref is not None:
            raise invalid("send the dataset inline or as dataset_ref, not both")
        declared = declared_dataset(request.suite)
        sent = request.dataset is not None or request.dataset_ref is not None
        if declared is not None and not is_file_reference(declared) and sent:
            raise invalid(f"the suite names the registry dataset {declared!r}; send no dataset")
        pinned = (
            self.platform.registry.resolve_dataset(request.dataset_ref).ref
            if request.dataset_ref
            else None
        )
        try:
            suite, dataset_version = load_request_suite(
                self.platform,
                request.suite,
                filename=request.filename,
                dataset_text=request.dataset,
                dataset_version=pinned,
            )
        except SuiteError as error:
            raise suite_problems(error) from error
        target = resolve_target(self.platform, request.target)
        run_id = new_run_id()
        row = EvalRunRow(
            id=run_id,
            status="queued",
            suite_name=suite.config.name,
            suite_version=suite.config.version,
            suite_digest=suite.digest,
            suite_text=request.suite,
            dataset_digest=suite.dataset_digest,
            dataset_ref=suite.dataset_ref,
            dataset_version=dataset_version,
            dataset_text=request.dataset,
            model=target.model,
            model_version=target.model_version,
            model_digest=target.model_digest,
            base_url=target.base_url,
            endpoint_model=target.endpoint_model,
            cache_identity=target.cache_identity,
            options=request.options.model_dump()
            | {
                "filename": request.filename,
                "executor": request.executor,
                "batch_size": request.batch_size,
            },
            created_by=actor,
        )
        self.store.create(row)
        if target.model_version is not None:
            self.platform.registry.add_lineage_edge(
                ("model_version", target.model_version),
                LINEAGE_RELATION,
                (LINEAGE_KIND, run_id),
                attributes={"suite": suite.config.name, "suite_digest": suite.digest},
            )
        return self._queue(run_id, actor, f"eval run {run_id} of {suite.config.name} queued")

    def resume(self, run_id: str, *, actor: str) -> EvalStarted:
        """Queues a failed run again; it keeps the generations it had finished."""
        row = self.store.row(run_id)
        if row.status != "failed":
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION, f"eval run {run_id} is {row.status}, not failed"
            )
        if row.suite_text is None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"eval run {run_id} was imported from a local run; run it again with the CLI",
            )
        return self._queue(run_id, actor, f"eval run {run_id} resumed by {actor or 'a user'}")

    def _queue(self, run_id: str, actor: str, message: str) -> EvalStarted:
        job = self.platform.jobs.submit(JOB_KIND, {"run_id": run_id}, actor=actor, message=message)
        self.store.set_status(run_id, "queued", job_id=job.id)
        return EvalStarted(run=self.store.get(run_id), job_id=job.id)

    def import_run(
        self,
        run: EvalRun,
        *,
        actor: str,
        suite_text: str | None = None,
        filename: str = "suite.yaml",
        dataset_text: str | None = None,
    ) -> EvalRunInfo:
        """Records a run the CLI finished against an endpoint (its key never left the user).

        With the suite (and its dataset file) it ran, the run keeps its cases' inputs, so error
        analysis and annotation queues work on it as on a run the server ran. A suite this
        server may not load (a custom metric it does not allow) is left out, not refused: the
        run was the user's to make.
        """
        if not run.run_id.startswith("evalrun-") or len(run.run_id) > 64:
            raise invalid("an imported run's id looks like evalrun-<hex>")
        if run.status == "running":
            raise invalid("only finished runs (completed or failed) can be imported")
        kept: str | None = None
        if suite_text is not None:
            try:
                suite, _ = load_request_suite(
                    self.platform, suite_text, filename=filename, dataset_text=dataset_text
                )
            except (SuiteError, RegistryError):
                suite = None
            if suite is not None:
                if (suite.digest, suite.dataset_digest) != (run.suite_digest, run.dataset_digest):
                    raise invalid(
                        f"the suite or dataset sent is not the one run {run.run_id} ran "
                        "(their digests differ)"
                    )
                kept = suite_text
        row = EvalRunRow(
            id=run.run_id,
            status=run.status,
            suite_name=run.suite_name,
            suite_version=run.suite_version,
            suite_digest=run.suite_digest,
            dataset_digest=run.dataset_digest,
            dataset_ref=run.dataset_ref,
            model=run.target.model,
            base_url=check_endpoint(run.target.base_url),
            endpoint_model=run.target.model,
            cache_identity=run.target.cache_identity,
            created_by=actor,
            created_at=run.started_at,
        )
        if kept is not None:
            row.suite_text, row.dataset_text = kept, dataset_text
            row.options = {"filename": filename}
        return self.store.import_run(row, run)

    def suite(self, run_id: str) -> Suite | None:
        """The run's suite with its cases, as the run loaded them; None for a run imported
        without them."""
        row = self.store.row(run_id)
        return self._suite_of(row, None) if row.suite_text else None

    def compare(self, baseline_id: str, candidate_id: str) -> Comparison:
        return compare_runs(self.store.run(baseline_id), self.store.run(candidate_id))

    def events(self, run_id: str, after: int | None = None) -> list[Any]:
        row = self.store.row(run_id)
        if row.job_id is None:
            return []
        return self.platform.jobs.events(row.job_id, after=after)

    # -- the job ---------------------------------------------------------------------------------

    def execute(self, context: JobContext) -> dict[str, Any]:
        """Runs (or resumes) the run named by the job; generations already stored are skipped."""
        run_id = context.job.payload["run_id"]
        try:
            return self._execute(context, run_id)
        except JobCancelled:
            self.store.fail(run_id, "cancelled")
            raise
        except EvalRunFailed:
            raise
        except Exception as error:
            # The job records the failure too; the run must say why, not stay "running".
            self.store.fail(run_id, f"{type(error).__name__}: {error}")
            raise

    def _execute(self, context: JobContext, run_id: str) -> dict[str, Any]:
        row = self.store.row(run_id)
        options = RunOptions.model_validate(
            {k: v for k, v in row.options.items() if k in RunOptions.model_fields}
        )
        cache = None if options.no_cache else DatabaseCache(self.platform.engine)
        suite = self._suite_of(row, cache)
        self.store.set_status(run_id, "running")
        done = self.store.generations(run_id)
        if done:
            context.event(f"resuming: {len(done)} generation(s) already stored")
        sink = _DatabaseSink(self.store, context, suite)
        # A registry model is served by the gateway, which wants the platform's serving key.
        key = self.platform.serving_key if row.model_version is not None else None
        target = Target(
            base_url=row.base_url or "",
            model=row.endpoint_model,
            cache_identity=row.cache_identity,
            api_key=SecretStr(key or "EMPTY"),
        )
        runtime = metric_runtime(self.platform.settings, row.suite_text or "", cache)
        if row.options.get("executor") == "ray":
            run = run_on_ray(
                context,
                self.platform.settings.ray_address,
                suite,
                target,
                options=options,
                batch_size=int(row.options.get("batch_size", 16)),
                cache=cache,
                sink=sink,
                progress=sink.progress,
                stored=done,
                run_id=run_id,
                metric_runtime=runtime,
            )
        else:
            run = run_suite(
                suite,
                target,
                cache=cache,
                options=options,
                sink=sink,
                progress=sink.progress,
                resume=done,
                run_id=run_id,
                metric_runtime=runtime,
            )
        if run.status != "completed":
            raise EvalRunFailed(f"eval run {run_id} failed: {run.error}")
        return {"run_id": run_id, "overall_score": run.overall_score, "passed": run.passed}

    def _suite_of(self, row: EvalRunRow, cache: Any) -> Suite:
        suite, _ = load_request_suite(
            self.platform,
            row.suite_text or "",
            filename=str(row.options.get("filename", "suite.yaml")),
            dataset_text=row.dataset_text,
            dataset_version=row.dataset_version,
            cache=cache,
        )
        if (suite.digest, suite.dataset_digest) != (row.suite_digest, row.dataset_digest):
            raise RuntimeError(f"eval run {row.id}: its suite or dataset changed since submission")
        return suite


class _DatabaseSink:
    """Stores each generation at once, checks for cancellation, reports progress as events."""

    def __init__(self, store: EvalStore, context: JobContext, suite: Suite) -> None:
        self.store = store
        self.context = context
        self.tags = {case.id: case.tags for case in suite.cases}
        self._reported = -1

    def on_generation(self, run: EvalRun, record: GenerationRecord) -> None:
        self.store.add_generation(run.run_id, record, self.tags.get(record.case_id, []))
        self.context.check_cancelled()

    def on_finish(self, run: EvalRun) -> None:
        """The event before the outcome: a follower that sees the run finished has its last
        event to read."""
        summary = ", ".join(
            f"{name}={summary.aggregate.value:.4g}"
            for name, summary in run.metrics.items()
            if summary.aggregate.value is not None
        )
        level = "info" if run.status == "completed" else "error"
        self.context.event(f"run {run.status}: {summary or run.error}", level=level)
        self.store.finish(run)

    def progress(self, progress: Progress) -> None:
        step = max(1, progress.total // 10)
        if progress.done == progress.total or progress.done - self._reported >= step:
            self._reported = progress.done
            self.context.event(
                f"{progress.phase} {progress.done}/{progress.total}",
                data={
                    "phase": progress.phase,
                    "done": progress.done,
                    "total": progress.total,
                    "cached": progress.cached,
                },
            )


def eval_handler(platform: Platform) -> Handler:
    """The job handler, running evaluations on `platform`."""

    def handle(context: JobContext) -> dict[str, Any] | None:
        return EvalService(platform).execute(context)

    return handle
