"""`evalhub models | versions | alias | datasets | resolve`: the registry through the REST API."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from evalhub.cli.output import api_errors, byte_progress, console, fail, fields, print_json, table
from evalhub.client import ApiError, Client
from evalhub.uploads import pack_directory
from registry.errors import RegistryError
from registry.names import parse_ref

models_app = typer.Typer(help="Registered models (base models and adapters).", no_args_is_help=True)
versions_app = typer.Typer(
    help="Model versions: register, list, show, lineage.", no_args_is_help=True
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
        archive = pack_directory(directory, Path(work) / "upload.tar.gz")
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
