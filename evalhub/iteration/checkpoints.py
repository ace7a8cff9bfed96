"""Fine-tuning checkpoints scored on a held-out suite, so the job registers the best one.

Each scored checkpoint is an ordinary eval run (stored, comparable, open to error analysis), made
by the eval runner through the generation cache under the checkpoint's content digest, with the
local engine generating in the job's own process. A checkpoint scored before a worker died is
not scored again: its run is kept on the checkpoint row, and the cache answers the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalhub.eval.record import EvalRun
from evalhub.eval.runner import Target, run_suite
from evalhub.eval.service import (
    LINEAGE_KIND,
    LINEAGE_RELATION,
    declared_dataset,
    load_request_suite,
    metric_runtime,
    refuse_suite_secrets,
)
from evalhub.eval.store import DatabaseCache, EvalStore, new_run_id
from evalhub.eval.suite import Suite, SuiteError, is_file_reference
from evalhub.eval.tables import EvalRunRow
from evalhub.finetune.errors import bad_param
from evalhub.finetune.protocol import CheckpointEval
from evalhub.finetune.service import checkpoint_model_id
from evalhub.iteration.engine_client import EngineClient
from evalhub.jobs.queue import Job
from evalhub.platform import Platform
from registry.artifacts import compute_tree
from registry.errors import RegistryError

if TYPE_CHECKING:
    from evalhub.serving.local.engine import LocalEngine

# The endpoint a checkpoint run records: the job's own process, not a server anyone can call.
LOCAL_ENDPOINT = "local://fine_tuning/jobs"


def plan(platform: Platform, spec: CheckpointEval) -> dict[str, Any]:
    """Checks the suite and metric before the job is queued; pins the suite and dataset."""
    try:
        refuse_suite_secrets(spec.suite)
    except RegistryError as error:
        raise bad_param("evalhub.eval.suite", error.message) from None
    declared = declared_dataset(spec.suite)
    if declared is not None and is_file_reference(declared) and spec.dataset is None:
        raise bad_param(
            "evalhub.eval.dataset",
            f"the suite names the file {declared!r}: register it (evalhub datasets create) and "
            "give it as eval.dataset",
        )
    try:
        pinned = platform.registry.resolve_dataset(spec.dataset).ref if spec.dataset else None
        suite, dataset_version = load_request_suite(platform, spec.suite, dataset_version=pinned)
    except SuiteError as error:
        problems = "; ".join(str(problem) for problem in error.problems)
        raise bad_param("evalhub.eval.suite", f"the suite cannot run: {problems}") from None
    except RegistryError as error:
        raise bad_param("evalhub.eval", error.message) from None
    # With the options the settings supply (the price table, the judge), as the scoring will.
    metrics = suite.build_metrics(metric_runtime(platform.settings, spec.suite, None))
    if spec.metric not in metrics:
        raise bad_param(
            "evalhub.eval.metric",
            f"the suite has no metric {spec.metric!r}; it has {', '.join(sorted(metrics))}",
        )
    return {
        "suite": spec.suite,
        "suite_name": suite.config.name,
        "suite_digest": suite.digest,
        "dataset_digest": suite.dataset_digest,
        "dataset_version": dataset_version,
        "metric": spec.metric,
        "higher_is_better": bool(metrics[spec.metric].higher_is_better),
        "every": spec.every,
        "cases": len(suite.cases),
    }


class SuiteScorer:
    """Runs a planned suite (see `plan`) on local models in this process and stores each run.

    One engine per base: adapters on the same base are swapped into it, so a job that scores
    many adapter checkpoints loads its base once.
    """

    def __init__(self, platform: Platform, plan: dict[str, Any], job: Job) -> None:
        self.platform = platform
        self.plan = plan
        self.job = job
        self.cache = DatabaseCache(platform.engine)
        self.store = EvalStore(platform.engine)
        self._suite: Suite | None = None
        self._engines: dict[Path, LocalEngine] = {}

    def suite(self) -> Suite:
        if self._suite is None:
            suite, _ = load_request_suite(
                self.platform,
                self.plan["suite"],
                dataset_version=self.plan["dataset_version"],
                cache=self.cache,
            )
            if (suite.digest, suite.dataset_digest) != (
                self.plan["suite_digest"],
                self.plan["dataset_digest"],
            ):
                raise RuntimeError("the suite or its dataset changed since the job was submitted")
            self._suite = suite
        return self._suite

    def run(self, model: str, base_dir: Path, adapter_dir: Path | None, identity: str) -> EvalRun:
        """The suite on `base_dir` (with `adapter_dir` on it), cached under `identity`.

        Loading a model or an adapter draws from torch's global generator (weights are
        initialised before they are overwritten), which training's dropout also draws from: the
        generator is forked, so a job that scores trains exactly as one that does not.
        """
        import torch

        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            return self._run(model, base_dir, adapter_dir, identity)

    def _run(self, model: str, base_dir: Path, adapter_dir: Path | None, identity: str) -> EvalRun:
        from evalhub.serving.local.engine import LocalEngine

        adapter = None
        if adapter_dir is None:  # a whole model (a full fine-tune's checkpoint): used once
            engine = LocalEngine(base_dir)
        else:
            if base_dir not in self._engines:
                self._engines[base_dir] = LocalEngine(base_dir)
            engine = self._engines[base_dir]
            adapter = "scored"
            engine.load_adapter(adapter, adapter_dir, load_inplace=True)
        target = Target(base_url=LOCAL_ENDPOINT, model=model, cache_identity=identity)
        run = run_suite(
            self.suite(),
            target,
            cache=self.cache,
            client=EngineClient(engine, adapter),
            run_id=new_run_id(),
            metric_runtime=metric_runtime(self.platform.settings, self.plan["suite"], self.cache),
        )
        if run.status != "completed":
            raise RuntimeError(f"scoring {model} on the suite failed: {run.error}")
        self._store(run, model, identity)
        return run

    def run_version(self, ref: str) -> EvalRun:
        """The suite on a registered version (a base, or an adapter on its base)."""
        registry = self.platform.registry
        version = registry.resolve(ref)
        if version.base is None:
            return self.run(version.ref, registry.model_path(version.ref), None, version.digest)
        base = registry.resolve(version.base)
        return self.run(
            version.ref,
            registry.model_path(base.ref),
            registry.model_path(version.ref),
            f"{version.digest}+{base.digest}",
        )

    def _store(self, run: EvalRun, model: str, identity: str) -> None:
        self.store.import_run(
            EvalRunRow(
                id=run.run_id,
                job_id=self.job.id,
                status=run.status,
                suite_name=run.suite_name,
                suite_version=run.suite_version,
                suite_digest=run.suite_digest,
                suite_text=self.plan["suite"],
                dataset_digest=run.dataset_digest,
                dataset_ref=run.dataset_ref,
                dataset_version=self.plan["dataset_version"],
                model=model,
                base_url=LOCAL_ENDPOINT,
                endpoint_model=model,
                cache_identity=identity,
                options={"scored_by": self.job.id},
                created_by=self.job.created_by,
                created_at=run.started_at,
            ),
            run,
        )


def summary(run: EvalRun) -> dict[str, float | None]:
    """Each metric's headline value."""
    return {name: metric.aggregate.value for name, metric in run.metrics.items()}


class CheckpointScorer:
    """Scores one fine-tuning job's checkpoints on the suite its request named."""

    def __init__(self, platform: Platform, job: Job) -> None:
        self.platform = platform
        self.job = job
        self.plan: dict[str, Any] = job.payload["eval"]
        self.scorer = SuiteScorer(platform, self.plan, job)
        self.base = platform.registry.resolve(job.payload["base"])
        self.adapter = job.payload["output_kind"] == "adapter"

    @property
    def metric(self) -> str:
        return str(self.plan["metric"])

    def score(self, step: int, directory: Path) -> dict[str, Any]:
        """Runs the suite on the model in `directory` (a checkpoint's model files)."""
        digest = compute_tree(directory).digest
        model = checkpoint_model_id(self.job.payload["fine_tuned_model"], step)
        if self.adapter:
            base_dir = self.platform.registry.model_path(self.base.ref)
            run = self.scorer.run(model, base_dir, directory, f"{digest}+{self.base.digest}")
        else:
            run = self.scorer.run(model, directory, None, digest)
        values = summary(run)
        return {
            "step": step,
            "run_id": run.run_id,
            "value": values.get(self.metric),
            "metrics": values,
            "digest": digest,
            "cached": sum(g.cached for result in run.results for g in result.generations),
        }

    def best(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """The best by the metric; on a tie the earliest, which trained least."""
        known = [entry for entry in scored if entry["value"] is not None]
        if not known:
            raise RuntimeError(f"no checkpoint has a {self.metric} score")
        sign = 1 if self.plan["higher_is_better"] else -1
        return max(known, key=lambda entry: (sign * entry["value"], -entry["step"]))

    def registered(self, version_ref: str, scored: list[dict[str, Any]], selected: int) -> None:
        """Links every checkpoint's run to the version, so its lineage shows them all."""
        for entry in scored:
            self.platform.registry.add_lineage_edge(
                ("model_version", version_ref),
                LINEAGE_RELATION,
                (LINEAGE_KIND, entry["run_id"]),
                attributes={
                    "suite": self.plan["suite_name"],
                    "suite_digest": self.plan["suite_digest"],
                    "checkpoint_step": entry["step"],
                    "selected": entry["step"] == selected,
                },
            )
