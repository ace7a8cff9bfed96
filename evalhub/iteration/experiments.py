"""Experiments: a search over fine-tuning options whose trials are ordinary fine-tuning jobs, each
scored on a held-out suite, ranked against a baseline, the winner given an alias.

The experiment is itself a job (kind "experiment"), queued just before its trials. Its first turn
scores the baseline on the suite; while any trial is still queued it goes back to the end of the
queue (`JobDeferred`), so one worker runs the trials first and several workers share them; its
last turn ranks the trials and moves the alias. The jobs tables stay the system of record: the
experiment's state, its trials' state and their events are jobs.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlmodel import Session

from evalhub.finetune import service as finetune
from evalhub.finetune.errors import ParamError
from evalhub.finetune.protocol import SUFFIX_PATTERN, EvalhubOptions, FineTuneJobCreate
from evalhub.iteration import checkpoints
from evalhub.iteration.leaderboard import Leaderboard, baseline_run_id, rank
from evalhub.jobs.queue import Job, JobStatus, new_job_id
from evalhub.jobs.worker import JobContext, JobDeferred
from evalhub.platform import Platform
from registry.db import writer
from registry.entities import DatasetFormat, Mutation, Page
from registry.errors import ErrorCode, RegistryError, invalid
from registry.names import check_alias

KIND = "experiment"
JOB_PREFIX = "exp"
MAX_TRIALS = 64
# How often a last turn looks at trials that other workers are running.
WAIT_SECONDS = 1.0
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
SYNONYMS = {"epochs": "n_epochs"}
TRAINING_OPTIONS = frozenset(EvalhubOptions.model_fields) - {"method", "eval"}

Choice = str | int | float | bool | list[str]


class Range(BaseModel):
    """A span for random search: uniform, or log-uniform (learning rates); `integer` rounds."""

    model_config = ConfigDict(extra="forbid")

    min: float
    max: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        return self

    def sample(self, rng: random.Random) -> float | int:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        else:
            value = rng.uniform(self.min, self.max)
        return round(value) if self.integer else float(f"{value:.4g}")


class ExperimentSpec(BaseModel):
    """What `evalhub experiment run sweep.yaml` sends (the CLI reads the suite file into `suite`).

    Keys of `space` and `fixed`: `method`; OpenAI's `n_epochs` (or `epochs`), `batch_size`,
    `learning_rate_multiplier`; evalhub's training options (`learning_rate`, `max_steps`,
    `warmup_ratio`, `scheduler`, ...); anything else is the method's own option (`rank`,
    `alpha`, `dropout`, `target_modules`, `include_lm_head`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Trials register as versions of `<base name>-<name>`.")
    base: str = Field(min_length=1, description="The base model reference.")
    dataset: str = Field(min_length=1, description="A chat dataset version: name or name/3.")
    validation_dataset: str | None = None
    suite: str = Field(min_length=1, description="The held-out suite's YAML text.")
    suite_dataset: str | None = Field(
        default=None, description="A registry dataset for the file the suite names."
    )
    metric: str = Field(min_length=1, description="The suite metric that ranks the trials.")
    baseline: str | None = Field(
        default=None, description="What the trials must beat; the base model if unset."
    )
    search: Literal["grid", "random"] = "grid"
    budget: int | None = Field(
        default=None, ge=1, le=MAX_TRIALS, description="Most trials; random search needs it."
    )
    space: dict[str, Annotated[list[Choice], Field(max_length=MAX_TRIALS)] | Range] = Field(
        min_length=1, max_length=16
    )
    fixed: dict[str, Any] = Field(default_factory=dict, description="Options of every trial.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Training and sampling seed.")
    eval_every: int | None = Field(
        default=None, gt=0, le=1_000_000, description="Steps between scored checkpoints."
    )
    alias: str = Field(default="candidate", description="Moved to the winner at the end.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SUFFIX_PATTERN.match(value):
            raise ValueError(
                "must be 1 to 40 lower-case letters, digits, '-' or '_', starting with a letter "
                f"or digit, got {value!r}"
            )
        return value

    @field_validator("space")
    @classmethod
    def _choices(cls, value: dict[str, list[Choice] | Range]) -> dict[str, list[Choice] | Range]:
        empty = [key for key, choices in value.items() if isinstance(choices, list) and not choices]
        if empty:
            raise ValueError(f"{', '.join(empty)}: give at least one value")
        return value


class TrialState(BaseModel):
    trial: int
    job_id: str
    status: str
    params: dict[str, Any]


class ExperimentView(BaseModel):
    id: str
    name: str
    status: str
    base: str
    baseline: str
    metric: str
    search: str
    output_model: str
    alias: str
    trials_total: int
    trials_finished: int
    trials: list[TrialState]
    leaderboard: Leaderboard
    winner: str | None = Field(description="The winning version, once the experiment ends.")
    error: str | None
    created_by: str
    created_at: float
    finished_at: float | None


# -- planning ----------------------------------------------------------------------------------


def trial_params(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """The trials' options: the whole grid, or `budget` random draws (seeded)."""
    both = sorted(set(spec.space) & set(spec.fixed))
    if both:
        raise invalid(f"{', '.join(both)}: in both space and fixed; give each option once")
    keys = list(spec.space)
    if spec.search == "grid":
        ranges = [key for key in keys if isinstance(spec.space[key], Range)]
        if ranges:
            raise invalid(
                f"{', '.join(ranges)}: a grid takes lists of values; ranges need search: random"
            )
        lists = [choices for choices in spec.space.values() if isinstance(choices, list)]
        size = 1
        for choices in lists:
            size *= len(choices)
        limit = min(spec.budget or MAX_TRIALS, MAX_TRIALS)
        if size > limit:
            raise invalid(
                f"the grid has {size} trials, more than the budget of {limit}: raise budget "
                f"(at most {MAX_TRIALS}), narrow the space, or use search: random"
            )
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    if spec.budget is None:
        raise invalid("random search needs a budget: the number of trials")
    rng = random.Random(spec.seed)
    return [
        {
            key: choices.sample(rng) if isinstance(choices, Range) else rng.choice(choices)
            for key, choices in spec.space.items()
        }
        for _ in range(spec.budget)
    ]


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items())


def trial_request(spec: ExperimentSpec, params: dict[str, Any], index: int) -> FineTuneJobCreate:
    """The fine-tuning job of one trial, as the OpenAI-style API would receive it."""
    values = {SYNONYMS.get(key, key): value for key, value in (spec.fixed | params).items()}
    hyperparameters = {key: values.pop(key) for key in HYPERPARAMETERS if key in values}
    scored = {"suite": spec.suite, "metric": spec.metric, "every": spec.eval_every}
    if spec.suite_dataset:
        scored["dataset"] = spec.suite_dataset
    body: dict[str, Any] = {
        "model": spec.base,
        "training_file": spec.dataset,
        "suffix": spec.name,
        "seed": spec.seed,
        "metadata": {"experiment": spec.name, "trial": str(index)},
        "evalhub": {"method": values.pop("method", "lora"), **values, "eval": scored},
    }
    if hyperparameters:
        body["hyperparameters"] = hyperparameters
    try:
        return FineTuneJobCreate.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise invalid(f"trial {index} ({describe(params)}): {problems}") from None


def registered_data(platform: Platform, ref: str, field: str) -> finetune.RegisteredData:
    try:
        version = platform.registry.resolve_dataset(ref)
    except RegistryError as error:
        raise RegistryError(error.code, f"{field}: {error.message}") from None
    if version.format is not DatasetFormat.CHAT:
        raise invalid(
            f"{field}: {version.ref} holds {version.format.value} rows; trials train on chat "
            "rows (evalhub datasets add FILE --name NAME --format chat)"
        )
    path = platform.registry.dataset_path(version.ref)
    return finetune.RegisteredData(version.ref, path, version.filename or path.name)


def create_experiment(platform: Platform, spec: ExperimentSpec, *, actor: str = "") -> Job:
    """Checks every trial as job creation would, then queues the experiment and its trials; a
    refused experiment stores nothing."""
    check_alias(spec.alias)
    params = trial_params(spec)
    train = registered_data(platform, spec.dataset, "dataset")
    validation = None
    if spec.validation_dataset:
        validation = registered_data(platform, spec.validation_dataset, "validation_dataset")
    try:
        baseline = platform.registry.resolve(spec.baseline or spec.base).ref
    except RegistryError as error:
        raise RegistryError(error.code, f"baseline: {error.message}") from None
    plan_eval = partial(checkpoints.plan, platform)
    prepared = []
    for index, options in enumerate(params, start=1):
        request = trial_request(spec, options, index)
        try:
            prepared.append(
                finetune.prepare_job(
                    platform, request, plan_eval=plan_eval, train=train, validation=validation
                )
            )
        except ParamError as error:
            message = f"trial {index} ({describe(options)}): {error.message}"
            raise ParamError(error.code, message, error.param) from None
    plan = prepared[0].eval_plan
    assert plan is not None, "every trial is scored on the suite"
    experiment_id = new_job_id(JOB_PREFIX)
    trials: list[dict[str, Any]] = [
        {"trial": index, "params": options, "job_id": new_job_id(finetune.JOB_PREFIX)}
        for index, options in enumerate(params, start=1)
    ]
    payload = {
        "spec": spec.model_dump(mode="json"),
        "baseline": baseline,
        "plan": plan,
        "output_model": prepared[0].output_name,
        "trials": trials,
    }
    job = platform.jobs.submit(
        KIND, payload, actor=actor, job_id=experiment_id,
        message=f"Created experiment {spec.name}: {len(trials)} trials ({spec.search})",
    )  # fmt: skip
    for trial, ready in zip(trials, prepared, strict=True):
        finetune.submit_job(
            platform, ready, actor=actor, job_id=trial["job_id"],
            links={"experiment": {"id": experiment_id, "trial": trial["trial"]}},
        )  # fmt: skip
    _audit(platform, actor, "experiment.create", experiment_id, payload)
    return job


def _audit(platform: Platform, actor: str, action: str, job_id: str, after: dict) -> None:
    with Session(writer(platform.engine)) as session:
        mutation = Mutation(
            actor=actor, action=action, resource=f"experiments/{job_id}", after=after
        )
        platform.events.record(session, mutation)
        session.commit()


# -- running -----------------------------------------------------------------------------------


def run_experiment(context: JobContext, platform: Platform) -> dict[str, Any]:
    """The handler: baseline first, then (once every trial has ended) the ranking and alias."""
    job = context.job
    payload = job.payload
    metric = payload["plan"]["metric"]
    if baseline_run_id(platform, job.id) is None:
        context.event(f"Scoring the baseline {payload['baseline']} on the suite")
        scorer = checkpoints.SuiteScorer(platform, payload["plan"], job)
        run = scorer.run_version(payload["baseline"])
        value = checkpoints.summary(run).get(metric)
        context.event(
            f"Baseline {payload['baseline']}: {metric}={value} (eval run {run.run_id})",
            data={"type": "baseline_eval", "run_id": run.run_id, "value": value},
        )
    while True:
        context.check_cancelled()
        trials = trial_jobs(platform, job)
        if any(trial.status is JobStatus.QUEUED for trial in trials):
            raise JobDeferred("waiting for its trials")
        if all(trial.status.finished for trial in trials):
            break
        time.sleep(WAIT_SECONDS)  # the rest run on other workers
    board = rank(platform, job, trials)
    winner = next((row for row in board.trials if row.best), None)
    if winner is None or winner.version is None:
        failures = "; ".join(f"trial {row.trial}: {row.error}" for row in board.trials)
        raise RuntimeError(f"no trial succeeded ({failures})")
    name, version = winner.version.split("/")
    alias = payload["spec"]["alias"]
    platform.registry.set_alias(
        name, alias, int(version), actor=job.created_by,
        reason=f"experiment {job.id}: best {metric} on the suite (trial {winner.trial})",
    )  # fmt: skip
    context.event(
        f"Winner: trial {winner.trial} ({describe(winner.params)}), {metric}={winner.value}; "
        f"{name}@{alias} -> {winner.version}"
    )
    return {"leaderboard": board.model_dump(mode="json"), "winner": winner.version}


def trial_jobs(platform: Platform, experiment: Job) -> list[Job]:
    return [platform.jobs.get(trial["job_id"]) for trial in experiment.payload["trials"]]


# -- reading and cancelling --------------------------------------------------------------------


def find_experiment(platform: Platform, experiment_id: str) -> Job:
    return platform.jobs.get(experiment_id, kind=KIND, noun="experiment")


def view(platform: Platform, job: Job) -> ExperimentView:
    payload, spec = job.payload, job.payload["spec"]
    trials = trial_jobs(platform, job)
    if job.status is JobStatus.SUCCEEDED and job.result:
        board = Leaderboard.model_validate(job.result["leaderboard"])
    else:
        board = rank(platform, job, trials)
    if job.status.finished:
        status = job.status.value
    elif job.status is JobStatus.RUNNING or any(t.status is not JobStatus.QUEUED for t in trials):
        status = "running"
    else:
        status = "queued"
    return ExperimentView(
        id=job.id,
        name=spec["name"],
        status=status,
        base=spec["base"],
        baseline=payload["baseline"],
        metric=spec["metric"],
        search=spec["search"],
        output_model=payload["output_model"],
        alias=spec["alias"],
        trials_total=len(trials),
        trials_finished=sum(trial.status.finished for trial in trials),
        trials=[
            TrialState(
                trial=entry["trial"],
                job_id=trial.id,
                status=trial.status.value,
                params=entry["params"],
            )
            for entry, trial in zip(payload["trials"], trials, strict=True)
        ],
        leaderboard=board,
        winner=(job.result or {}).get("winner"),
        error=job.error,
        created_by=job.created_by,
        created_at=job.created_at.timestamp(),
        finished_at=job.finished_at.timestamp() if job.finished_at else None,
    )


def list_experiments(
    platform: Platform, *, limit: int = 20, page_token: str | None = None
) -> Page[ExperimentView]:
    page = platform.jobs.search(kind=KIND, limit=limit, page_token=page_token)
    return Page(
        data=[view(platform, job) for job in page.data], next_page_token=page.next_page_token
    )


def cancel_experiment(platform: Platform, experiment_id: str, *, actor: str = "") -> Job:
    """Cancels the experiment and every trial that has not ended."""
    job = find_experiment(platform, experiment_id)
    if job.status.finished:
        raise RegistryError(
            ErrorCode.FAILED_PRECONDITION, f"experiment {experiment_id} already {job.status.value}"
        )
    cancelled = [job.id]
    for trial in trial_jobs(platform, job):
        if not trial.status.finished:
            platform.jobs.cancel(trial.id, actor=actor)
            cancelled.append(trial.id)
    job = platform.jobs.cancel(job.id, actor=actor)
    _audit(platform, actor, "experiment.cancel", job.id, {"cancelled": cancelled})
    return job
