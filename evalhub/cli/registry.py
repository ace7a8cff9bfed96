"""`evalhub models | versions | alias | datasets | resolve`: the registry through the REST API."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from evalhub.cli.connection import connected
from evalhub.cli.output import (
    TrainingEvent,
    api_errors,
    byte_progress,
    console,
    errors,
    fail,
    fields,
    follow_training,
    number,
    print_json,
    table,
)
from evalhub.client import ApiError, Client
from evalhub.settings import Settings
from evalhub.uploads import pack_directory
from registry.errors import RegistryError
from registry.names import parse_ref

models_app = typer.Typer(help="Registered models (base models and adapters).", no_args_is_help=True)
versions_app = typer.Typer(
    help="Model versions: register, list, show, lineage, merge, reproduce.", no_args_is_help=True
)
alias_app = typer.Typer(
    help="Aliases such as name@production, with history and rollback.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Datasets: JSONL files stored by content.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

VERSION_FIELDS = [
    "ref", "kind", "status", "aliases", "digest", "size_bytes", "file_count", "source",
    "architecture", "parameter_count", "dtype", "base", "peft_method", "rank", "alpha",
    "target_modules", "dropout", "trainable_parameters", "trained_on", "dataset", "training_job",
    "hyperparameters", "seed", "code_version", "metrics", "description", "tags", "created_at",
    "created_by",
]  # fmt: skip


def _ref(value: str) -> tuple[str, str | None, int | None]:
    try:
        parsed = parse_ref(value)
    except RegistryError as error:
        fail(error.message)
    return parsed.name, parsed.alias, parsed.version


# -- models ------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    kind: Annotated[str | None, typer.Option(help="base or adapter")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List registered models."""
    with api_errors(), Client.connect() as client:
        rows = list(client.paged("/models", kind=kind))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["aliases"] = " ".join(f"@{a}={v}" for a, v in sorted(row["aliases"].items()))
    table(rows, ["name", "kind", "latest_version", "aliases", "description"], title="models")


@models_app.command("show")
def models_show(name: str, as_json: JsonFlag = False) -> None:
    """Show a model and its versions."""
    with api_errors(), Client.connect() as client:
        model = client.get(f"/models/{name}")
        versions = list(client.paged(f"/models/{name}/versions"))
    if as_json:
        print_json({**model, "versions": versions})
        return
    fields(model)
    table(versions, ["version", "status", "aliases", "digest", "base", "created_at"], "versions")


@models_app.command("create")
def models_create(
    name: str,
    kind: Annotated[str, typer.Option(help="base or adapter")] = "adapter",
    description: str = "",
) -> None:
    """Create a registered model."""
    with api_errors(), Client.connect() as client:
        model = client.post("/models", {"name": name, "kind": kind, "description": description})
    console.print(f"created model [bold]{model['name']}[/] ({model['kind']})")


@models_app.command("delete")
def models_delete(
    name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False
) -> None:
    """Delete a model with all its versions and aliases (admin)."""
    if not yes:
        typer.confirm(f"delete model {name} and all its versions?", abort=True)
    with api_errors(), Client.connect() as client:
        client.delete(f"/models/{name}")
    console.print(f"deleted model {name}")


# -- versions ----------------------------------------------------------------------------------


def register_directory(
    client: Client,
    directory: Path,
    model: str,
    *,
    base: str | None = None,
    description: str = "",
    lineage: dict | None = None,
) -> dict:
    """Packs a directory, uploads it with a progress bar and registers it as the next version."""
    with tempfile.TemporaryDirectory(prefix="evalhub-") as work:
        archive = pack_directory(directory, Path(work) / "upload.tar")
        fields_ = {
            "base": base,
            "description": description,
            "source": str(directory.resolve()),
            "lineage": json.dumps(lineage) if lineage else None,
        }
        with byte_progress(f"uploading {directory.name}", archive.stat().st_size) as advance:
            return client.upload(f"/models/{model}/versions", archive, fields_, progress=advance)


@versions_app.command("register")
def versions_register(
    directory: Annotated[
        Path, typer.Argument(help="A Hugging Face model dir or a PEFT adapter dir")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name")],
    base: Annotated[str | None, typer.Option(help="Base version ref, for adapters")] = None,
    description: str = "",
    dataset: Annotated[str | None, typer.Option(help="Dataset version it was trained on")] = None,
    create: Annotated[bool, typer.Option(help="Create the model if it is missing")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Register a model or adapter directory as the next version of MODEL."""
    if not directory.is_dir():
        fail(f"{directory} is not a directory")
    is_adapter = (directory / "adapter_config.json").is_file()
    with api_errors(), Client.connect() as client:
        if create:
            try:
                client.get(f"/models/{model}")
            except ApiError as error:
                if error.status != 404:
                    raise
                kind = "adapter" if is_adapter else "base"
                client.post("/models", {"name": model, "kind": kind})
        lineage = {"dataset": dataset} if dataset else None
        version = register_directory(
            client, directory, model, base=base, description=description, lineage=lineage
        )
    if as_json:
        print_json(version)
        return
    console.print(f"registered [bold]{version['ref']}[/] ({version['digest'][:19]}…)")


@versions_app.command("list")
def versions_list(model: str, as_json: JsonFlag = False) -> None:
    """List the versions of a model."""
    with api_errors(), Client.connect() as client:
        rows = list(client.paged(f"/models/{model}/versions"))
    if as_json:
        print_json(rows)
        return
    table(rows, ["ref", "status", "aliases", "digest", "base", "peft_method", "created_at"])


@versions_app.command("show")
def versions_show(ref: str, as_json: JsonFlag = False) -> None:
    """Show a version: name/3, name@alias or name (latest)."""
    with api_errors(), Client.connect() as client:
        version = client.get("/resolve", ref=ref)
    if as_json:
        print_json(version)
        return
    fields(version, VERSION_FIELDS)


@versions_app.command("lineage")
def versions_lineage(ref: str, as_json: JsonFlag = False) -> None:
    """Where a version came from (base, dataset, job) and what was built on it."""
    with api_errors(), Client.connect() as client:
        version = client.get("/resolve", ref=ref)
        lineage = client.get(f"/models/{version['model']}/versions/{version['version']}/lineage")
    if as_json:
        print_json(lineage)
        return
    console.print(f"[bold]{version['ref']}[/] {version['digest']}")
    if lineage["base"]:
        console.print(f"  base     {lineage['base']['ref']} {lineage['base']['digest']}")
    if lineage["dataset"]:
        console.print(f"  dataset  {lineage['dataset']['ref']} {lineage['dataset']['digest']}")
    for edge in lineage["upstream"]:
        console.print(f"  {edge['relation']} by {edge['source_kind']} {edge['source_id']}")
    for ref_ in lineage["derived"]:
        console.print(f"  base of  {ref_}")
    for edge in lineage["downstream"]:
        console.print(f"  {edge['relation']} {edge['target_kind']} {edge['target_id']}")


@versions_app.command("merge")
def versions_merge(
    ref: Annotated[str, typer.Argument(help="The adapter version: name/3, name@alias or name")],
    as_json: JsonFlag = False,
) -> None:
    """Merge an adapter into its base as a base version of NAME-merged (once; reused after)."""
    with api_errors(), Client.connect() as client:
        version = client.get("/resolve", ref=ref)
        result = client.post(f"/models/{version['model']}/versions/{version['version']}/merge", {})
    if as_json:
        print_json(result)
        return
    merged = result["merged"]
    verb = "merged" if result["created"] else "already merged:"
    console.print(
        f"{verb} {result['adapter']} into {merged['ref']} ({merged['digest'][:19]}…); "
        f"serve it with 'evalhub backend vllm --base {merged['ref']}'"
    )


def parse_overrides(values: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; values read as YAML scalars (1, 0.5, true, text)."""
    overrides: dict[str, Any] = {}
    for item in values:
        key, equals, raw = item.partition("=")
        if not equals or not key.strip():
            fail(f"--override {item!r}: write KEY=VALUE, e.g. seed=1", 2)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list):
            fail(f"--override {item!r}: the value must be a single number, word or boolean", 2)
        overrides[key.strip()] = value
    return overrides


def follow_reproduction(client: Client, job: dict[str, Any], poll: float = 1.0) -> dict[str, Any]:
    """A progress bar with step and loss until the job ends; messages print above it (on
    stderr, so that --json prints only the report)."""
    seen: int | None = None

    def new_events() -> list[TrainingEvent]:
        nonlocal seen
        params = {"after": seen} if seen is not None else {}
        events = client.get(f"/reproductions/{job['id']}/events", **params)
        if events:
            seen = events[-1]["id"]
        return [
            ((e.get("data") or {}).get("type", ""), e.get("data") or {}, e["message"])
            for e in events
        ]

    return follow_training(
        job,
        job["total_steps"],
        lambda: client.get(f"/reproductions/{job['id']}"),
        new_events,
        to=errors,
        poll=poll,
    )


@versions_app.command("reproduce")
def versions_reproduce(
    ref: Annotated[str, typer.Argument(help="A fine-tuned version: name/3, name@alias, name")],
    override: Annotated[
        list[str] | None,
        typer.Option(
            "--override",
            "-o",
            metavar="KEY=VALUE",
            help="Retrain with this changed from the lineage, e.g. seed=1 or "
            "method_options.rank=8 (repeatable)",
        ),
    ] = None,
    detach: Annotated[bool, typer.Option(help="Queue the job and return at once.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Retrain a fine-tuned version from what its lineage records and compare the result with
    the registered files: exit 0 when bit-identical, 1 when it differs, 2 on error. Registers
    nothing."""
    overrides = parse_overrides(override or [])
    settings = Settings()
    with connected(settings, worker=not detach, error_code=2) as client:
        version = client.get("/resolve", ref=ref)
        job = client.post(
            f"/models/{version['model']}/versions/{version['version']}/reproduce",
            {"overrides": overrides},
        )
        if not as_json:
            console.print(
                f"queued [bold]{job['id']}[/]: retraining {job['version']} as "
                f"{job['training_job']} did ({job['total_steps']} steps)",
                highlight=False,
            )
        if detach:
            if as_json:
                print_json(job)
            return
        try:
            job = follow_reproduction(client, job)
        except KeyboardInterrupt:
            fail(f"stopped following {job['id']}; the job goes on", 130)
    if job["status"] != "succeeded":
        fail(f"reproduction {job['id']} {job['status']}: {job.get('error') or ''}", 2)
    report = job["report"]
    if as_json:
        print_json(report)
    else:
        show_reproduction(report)
    if not report["identical"]:
        raise typer.Exit(1)


def show_reproduction(report: dict[str, Any]) -> None:
    view = Table(title=f"reproduction of {report['version']} (trained by {report['training_job']})")
    for column in ("", "recorded", "reproduced"):
        view.add_column(column)
    view.add_row("digest", report["recorded_digest"], report["reproduced_digest"])
    for difference in report["differences"]:
        view.add_row(
            f"[bold]{difference['name']} *[/]",
            number(difference["recorded"]),
            number(difference["reproduced"]),
        )
    if report["metrics"]:
        view.add_section()
    for metric in report["metrics"]:
        view.add_row(metric["name"], number(metric["recorded"]), number(metric["reproduced"]))
    console.print(view)
    if report["identical"]:
        console.print(
            f"[bold green]identical[/]: {report['version']} reproduced bit for bit in "
            f"{report['seconds']:.1f} s",
            highlight=False,
        )
    else:
        named = ", ".join(d["name"] for d in report["differences"]) or "nothing recorded"
        console.print(
            f"[bold red]differs[/]: {', '.join(report['differing_files'])} not as registered "
            f"(what differs from the record: {named}); the files are in {report['directory']}",
            highlight=False,
        )


# -- aliases -----------------------------------------------------------------------------------


def _alias_ref(value: str) -> tuple[str, str]:
    name, alias, _ = _ref(value)
    if alias is None:
        fail(f"write the alias as name@alias, e.g. {value}@production")
    return name, alias


def _print_move(move: dict) -> None:
    before = move["from_version"] if move["from_version"] is not None else "-"
    after = move["to_version"] if move["to_version"] is not None else "-"
    console.print(
        f"@{move['alias']} of {move['model']}: {before} -> {after} ({move['action']} by "
        f"{move['actor']})"
    )


@alias_app.command("set")
def alias_set(
    ref: Annotated[str, typer.Argument(help="name@alias")],
    version: int,
    reason: str = "",
) -> None:
    """Point name@alias at a version (admin for @production)."""
    name, alias = _alias_ref(ref)
    with api_errors(), Client.connect() as client:
        _print_move(
            client.put(f"/models/{name}/aliases/{alias}", {"version": version, "reason": reason})
        )


@alias_app.command("show")
def alias_show(
    ref: Annotated[str, typer.Argument(help="name@alias")],
    at: Annotated[datetime | None, typer.Option(help="ISO time: the version held then")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The version an alias points at, now or at a past time."""
    name, alias = _alias_ref(ref)
    with api_errors(), Client.connect() as client:
        params = {"at": at.isoformat()} if at else {}
        version = client.get(f"/models/{name}/aliases/{alias}", **params)
    if as_json:
        print_json(version)
        return
    fields(version, VERSION_FIELDS)


@alias_app.command("history")
def alias_history(
    ref: Annotated[str, typer.Argument(help="name@alias")], as_json: JsonFlag = False
) -> None:
    """Every move of an alias, oldest first."""
    name, alias = _alias_ref(ref)
    with api_errors(), Client.connect() as client:
        rows = list(client.paged(f"/models/{name}/aliases/{alias}/history"))
    if as_json:
        print_json(rows)
        return
    table(rows, ["id", "created_at", "action", "from_version", "to_version", "actor", "reason"])


@alias_app.command("rollback")
def alias_rollback(
    ref: Annotated[str, typer.Argument(help="name@alias")], reason: str = ""
) -> None:
    """Point the alias back at the version it held before its last move (admin)."""
    name, alias = _alias_ref(ref)
    with api_errors(), Client.connect() as client:
        _print_move(client.post(f"/models/{name}/aliases/{alias}/rollback", {"reason": reason}))


@alias_app.command("delete")
def alias_delete(ref: Annotated[str, typer.Argument(help="name@alias")], reason: str = "") -> None:
    """Remove an alias (kept in its history)."""
    name, alias = _alias_ref(ref)
    with api_errors(), Client.connect() as client:
        _print_move(client.delete(f"/models/{name}/aliases/{alias}", reason=reason or None))


# -- datasets ----------------------------------------------------------------------------------


@datasets_app.command("add")
def datasets_add(
    file: Annotated[Path, typer.Argument(help="A JSONL file")],
    name: Annotated[str, typer.Option("--name", "-n")],
    format: Annotated[str, typer.Option(help="chat (OpenAI chat JSONL) or eval (cases)")] = "chat",
    split: Annotated[str | None, typer.Option(help="train, validation, test, ...")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a JSONL file as a dataset version (the same content twice gives the same version)."""
    if not file.is_file():
        fail(f"{file} is not a file")
    with (
        api_errors(),
        Client.connect() as client,
        byte_progress(f"uploading {file.name}", file.stat().st_size) as advance,
    ):
        fields_ = {"format": format, "split": split, "create": "true"}
        result = client.upload(f"/datasets/{name}/versions", file, fields_, progress=advance)
    if as_json:
        print_json(result)
        return
    version = result["version"]
    state = "added" if result["created"] else "already stored as"
    console.print(
        f"{state} [bold]{version['ref']}[/] ({version['row_count']} rows, {version['digest'][:19]}…)"
    )


@datasets_app.command("list")
def datasets_list(as_json: JsonFlag = False) -> None:
    """List datasets."""
    with api_errors(), Client.connect() as client:
        rows = list(client.paged("/datasets"))
    if as_json:
        print_json(rows)
        return
    table(rows, ["name", "latest_version", "description", "created_at"], title="datasets")


@datasets_app.command("show")
def datasets_show(name: str, as_json: JsonFlag = False) -> None:
    """Show a dataset's versions."""
    with api_errors(), Client.connect() as client:
        dataset = client.get(f"/datasets/{name}")
        versions = list(client.paged(f"/datasets/{name}/versions"))
    if as_json:
        print_json({**dataset, "versions": versions})
        return
    fields(dataset)
    table(versions, ["ref", "format", "split", "row_count", "size_bytes", "digest", "filename"])


@datasets_app.command("diff")
def datasets_diff(
    base: Annotated[str, typer.Argument(help="The version to compare with: name/N, or a name")],
    target: Annotated[str, typer.Argument(help="The version compared: name/N, or a name (latest)")],
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when TARGET has contradictions (for CI)")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rows added, removed and changed from BASE to TARGET, and the prompts TARGET answers in
    two different ways (contradictions)."""
    name, _, number = target.partition("/")
    with api_errors(), Client.connect() as client:
        if not number:
            number = str(client.get(f"/datasets/{name}")["latest_version"])
        diff = client.get(f"/datasets/{name}/versions/{number}/diff", base=base)
    if as_json:
        print_json(diff)
    else:
        console.print(
            f"{diff['base']} → {diff['target']}: {diff['added']} added, {diff['removed']} "
            f"removed, {diff['changed']} changed, {diff['unchanged']} unchanged",
            highlight=False,
        )
        for kind in ("added", "removed"):
            rows = [
                {"row": json.dumps(row, ensure_ascii=False)} for row in diff[f"examples_{kind}"]
            ]
            if rows:
                table(rows, ["row"], f"{kind} (first {len(rows)} of {diff[kind]})")
        changed = [
            {
                "key": change["key"],
                "before": json.dumps(change["before"], ensure_ascii=False),
                "after": json.dumps(change["after"], ensure_ascii=False),
            }
            for change in diff["examples_changed"]
        ]
        if changed:
            table(changed, ["key", "before", "after"], f"changed (first {len(changed)})")
        contradictions = [
            {**c, "answers": " | ".join(c["answers"]), "lines": ", ".join(map(str, c["lines"]))}
            for c in diff["contradictions"]
        ]
        if contradictions:
            table(contradictions, ["prompt", "answers", "lines"], "contradictions")
    if check and diff["contradictions"]:
        raise typer.Exit(1)
