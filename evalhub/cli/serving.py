"""`evalhub backend | deploy | traffic`: serving through the REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evalhub.cli.output import api_errors, console, fail, fields, print_json, table
from evalhub.client import Client

backend_app = typer.Typer(
    help="Backends that serve a base model and its adapters.", no_args_is_help=True
)
deploy_app = typer.Typer(
    help="Deployments: A/B arms, weights, rollouts, rollback.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _create_backend(
    name: str,
    kind: str,
    base: str,
    urls: list[str] | None,
    port: int | None,
    replicas: int,
    options: dict[str, Any] | None = None,
) -> None:
    body = {
        "name": name,
        "kind": kind,
        "base": base,
        "managed": not urls,
        "urls": urls or None,
        "replicas": replicas,
        "options": {**({"port": port} if port else {}), **(options or {})},
    }
    with api_errors(), Client.connect() as client:
        backend = client.post("/backends", body)
    how = "started" if backend["managed"] else "attached"
    console.print(
        f"{how} backend [bold]{backend['name']}[/] ({backend['kind']}) serving {backend['base']} "
        f"at {', '.join(backend['urls'])}: {backend['status']}"
    )


@backend_app.command("local")
def backend_local(
    base: Annotated[str, typer.Option(help="Base model version ref, e.g. tiny@production")],
    name: Annotated[str, typer.Option(help="Backend name")] = "local",
    port: Annotated[
        int | None, typer.Option(help="Port of the first replica (default: free)")
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Server processes to start")] = 1,
    url: Annotated[
        list[str] | None,
        typer.Option(help="Attach to local backend servers already running (repeatable)"),
    ] = None,
) -> None:
    """Serve a base model and its adapters with transformers + peft (CPU or GPU)."""
    _create_backend(name, "local", base, url, port, replicas)


@backend_app.command("vllm")
def backend_vllm(
    base: Annotated[str, typer.Option(help="Base model version ref")],
    name: Annotated[str, typer.Option(help="Backend name")] = "vllm",
    port: Annotated[
        int | None, typer.Option(help="Port of the first replica (default: free)")
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="vLLM processes to start")] = 1,
    url: Annotated[
        list[str] | None, typer.Option(help="Attach to vLLM servers already running (repeatable)")
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option(min=1, help="GPUs each replica shards the model over")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(min=0.05, max=1.0, help="Share of each GPU's memory vLLM may take"),
    ] = None,
    max_loras: Annotated[
        int | None, typer.Option(min=1, help="Adapters on the device at once")
    ] = None,
    max_lora_rank: Annotated[int | None, typer.Option(min=1, help="Largest adapter rank")] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option(
            help="More vLLM arguments, sizes and switches (repeatable): --arg=--dtype=auto"
        ),
    ] = None,
) -> None:
    """Serve a base model with vLLM, adapters hot-loaded (EVALHUB_VLLM_PYTHON runs it).

    Replicas take disjoint GPUs from EVALHUB_VLLM_GPUS, tensor parallel size each.
    """
    args = list(arg or [])
    if tensor_parallel_size is not None:
        args += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    options: dict[str, Any] = {"args": args} if args else {}
    if max_loras is not None:
        options["max_loras"] = max_loras
    if max_lora_rank is not None:
        options["max_lora_rank"] = max_lora_rank
    _create_backend(name, "vllm", base, url, port, replicas, options)


@backend_app.command("list")
def backend_list(as_json: JsonFlag = False) -> None:
    """List backends and their health."""
    with api_errors(), Client.connect() as client:
        rows = client.get("/backends")
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["urls"] = " ".join(row["urls"])
    table(rows, ["name", "kind", "managed", "base", "urls", "status", "restarts"], "backends")


@backend_app.command("delete")
def backend_delete(name: str) -> None:
    """Stop (if managed) and forget a backend."""
    with api_errors(), Client.connect() as client:
        client.delete(f"/backends/{name}")
    console.print(f"deleted backend {name}")


def _json_option(option: str, text: str) -> dict:
    """JSON given inline or, after an @, in a file."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            fail(f"{option}: cannot read {text[1:]}: {error}")
    try:
        value = json.loads(text)
    except ValueError as error:
        fail(f"{option} is not JSON: {error}")
    if not isinstance(value, dict):
        fail(f"{option} takes a JSON object")
    return value


SERVE_MODES = ("adapter", "merged", "auto")


def _parse_arm(text: str) -> dict:
    """`control=bot@production:80` -> {"name": "control", "model": "bot@production", "weight": 80};
    a trailing `:merged`, `:adapter` or `:auto` sets how the arm is served."""
    name, _, rest = text.partition("=")
    arm: dict = {}
    head, _, last = rest.rpartition(":")
    if last in SERVE_MODES:
        arm["serve"], rest = last, head
    model, _, weight = rest.rpartition(":")
    try:
        return {"name": name, "model": model, "weight": float(weight), **arm}
    except ValueError:
        fail(
            "write an arm as name=model:weight[:serve], e.g. control=bot@production:80 or "
            f"control=bot@production:80:merged (got {text!r})"
        )


def _arm_backends(pairs: list[str] | None, arms: list[dict]) -> None:
    """`--arm-backend champion=merged-1`: that arm runs on its own backend."""
    names = {arm["name"]: arm for arm in arms}
    for pair in pairs or []:
        name, _, backend = pair.partition("=")
        if name not in names or not backend:
            fail(
                f"--arm-backend takes ARM=BACKEND for one of the arms {sorted(names)} (got {pair!r})"
            )
        names[name]["backend"] = backend


def _print_deployment(deployment: dict) -> None:
    arms = ", ".join(
        f"{a['name']}={a['model']}:{a['weight']:g}"
        + (f":{a['serve']}" if a.get("serve", "auto") != "auto" else "")
        + (f" on {a['backend']}" if a.get("backend") else "")
        for a in deployment["arms"]
    )
    console.print(
        f"[bold]{deployment['name']}[/] on {deployment['backend']} (rev {deployment['revision']}): {arms}"
    )
    rollout = deployment.get("rollout")
    if rollout:
        steps = "/".join(f"{step:g}" for step in rollout["steps"])
        console.print(
            f"  rollout {rollout['status']}: step {rollout['index'] + 1} of {steps}, "
            f"candidate arm {rollout['candidate']}, control arm {rollout['control']}"
        )


@deploy_app.command("create")
def deploy_create(
    name: str,
    backend: Annotated[str, typer.Option(help="Backend name")],
    arm: Annotated[
        list[str],
        typer.Option(
            help="name=model:weight[:adapter|merged|auto] (auto: the default), repeatable"
        ),
    ],
    sticky: Annotated[str, typer.Option(help="user, header or none")] = "user",
    failover: Annotated[
        bool, typer.Option(help="Retry failed requests on the control arm")
    ] = False,
    arm_backend: Annotated[
        list[str] | None,
        typer.Option(help="ARM=BACKEND: that arm runs on its own backend (repeatable)"),
    ] = None,
) -> None:
    """Create a deployment, e.g. --arm control=bot@production:80 --arm candidate=bot@candidate:20."""
    arms = [_parse_arm(a) for a in arm]
    _arm_backends(arm_backend, arms)
    body = {
        "name": name,
        "backend": backend,
        "sticky": sticky,
        "failover": failover,
        "arms": arms,
    }
    with api_errors(), Client.connect() as client:
        _print_deployment(client.post("/deployments", body))


@deploy_app.command("list")
def deploy_list(as_json: JsonFlag = False) -> None:
    """List deployments."""
    with api_errors(), Client.connect() as client:
        rows = client.get("/deployments")
    if as_json:
        print_json(rows)
        return
    for row in rows:
        _print_deployment(row)


@deploy_app.command("show")
def deploy_show(name: str, as_json: JsonFlag = False) -> None:
    """Show a deployment's arms, weights and rollout."""
    with api_errors(), Client.connect() as client:
        deployment = client.get(f"/deployments/{name}")
    if as_json:
        print_json(deployment)
        return
    _print_deployment(deployment)
    fields(deployment, ["sticky", "failover", "created_by", "updated_at"])


@deploy_app.command("set-weights")
def deploy_set_weights(
    name: str, weights: Annotated[list[str], typer.Argument(help="arm=weight ...")]
) -> None:
    """Set arm weights, e.g. `evalhub deploy set-weights bot control=90 candidate=10`."""
    with api_errors(), Client.connect() as client:
        deployment = client.get(f"/deployments/{name}")
        wanted = {}
        for item in weights:
            arm, _, weight = item.partition("=")
            try:
                wanted[arm] = float(weight)
            except ValueError:
                fail(f"write weights as arm=number, got {item!r}")
        unknown = set(wanted) - {a["name"] for a in deployment["arms"]}
        if unknown:
            fail(f"no arm named {', '.join(sorted(unknown))} in {name}")
        arms = [{**a, "weight": wanted.get(a["name"], a["weight"])} for a in deployment["arms"]]
        _print_deployment(client.patch(f"/deployments/{name}", {"arms": arms}))


@deploy_app.command("monitoring")
def deploy_monitoring(
    name: str,
    sample_rate: Annotated[float, typer.Option(help="Share of requests scored, 0 to 1")] = 0.1,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help='An online metric: a name, or JSON such as \'{"name": "regex", '
            '"pattern": "^OK"}\'; repeat for several'
        ),
    ] = None,
) -> None:
    """Score a sample of the deployment's answers with reference-free metrics, off the request
    path; the scores feed `evalhub monitor` and the rollout controller."""
    metrics = [
        _json_option("--metric", text) if text.startswith(("{", "@")) else {"name": text}
        for text in metric or []
    ]
    body = {"monitoring": {"sample_rate": sample_rate, "metrics": metrics}}
    with api_errors(), Client.connect() as client:
        deployment = client.patch(f"/deployments/{name}", body)
    names = ", ".join(m["name"] for m in deployment["monitoring"]["metrics"]) or "no metrics"
    console.print(f"{name}: {sample_rate:g} of requests scored by {names}", highlight=False)


@deploy_app.command("rollout")
def deploy_rollout(
    name: str,
    action: Annotated[str, typer.Argument(help="start, step, pause, resume or abort")],
    steps: Annotated[
        str | None, typer.Option(help="For start: candidate weights, e.g. 5,25,50,100")
    ] = None,
    candidate: Annotated[str | None, typer.Option(help="For start: the candidate arm")] = None,
    control: Annotated[str | None, typer.Option(help="For start: the control arm")] = None,
    analysis: Annotated[
        str | None,
        typer.Option(
            help="For start: the controller's analysis as JSON, or @FILE, e.g. "
            '\'{"guards": [{"name": "json_valid", "margin": 0.05}], "min_requests": 100}\''
        ),
    ] = None,
) -> None:
    """Walk the candidate arm's weight through steps; abort puts all weight on control.

    With --analysis the rollout controller steps it, pauses it or rolls it back by itself.
    """
    body: dict = {"action": action, "candidate": candidate, "control": control}
    if analysis:
        body["analysis"] = _json_option("--analysis", analysis)
    if steps:
        try:
            body["steps"] = [float(s) for s in steps.split(",")]
        except ValueError:
            fail(f"--steps takes numbers separated by commas, got {steps!r}")
    with api_errors(), Client.connect() as client:
        _print_deployment(client.post(f"/deployments/{name}/rollout", body))


@deploy_app.command("rollback")
def deploy_rollback(name: str) -> None:
    """Restore the arms and weights the deployment had before its last change."""
    with api_errors(), Client.connect() as client:
        _print_deployment(client.post(f"/deployments/{name}/rollback"))


@deploy_app.command("delete")
def deploy_delete(name: str) -> None:
    """Delete a deployment."""
    with api_errors(), Client.connect() as client:
        client.delete(f"/deployments/{name}")
    console.print(f"deleted deployment {name}")


def traffic(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment")] = None,
    arm: Annotated[str | None, typer.Option(help="Only this arm")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The gateway's traffic log, newest first."""
    with api_errors(), Client.connect() as client:
        page = client.get("/traffic", deployment=deployment, arm=arm, limit=limit)
    if as_json:
        print_json(page["data"])
        return
    rows = [
        {
            **r,
            "time": r["created_at"][:19].replace("T", " "),
            "response": (r["response_text"] or r["error"] or "")[:40],
            "ms": round(r["latency_ms"], 1),
            "tokens": r["completion_tokens"],
        }
        for r in page["data"]
    ]
    # A filtered column says the same on every row: leave it out, the table fits 80 columns.
    columns = ["time", "deployment", "arm", "version", "status", "ms", "tokens", "response"]
    filtered = {"deployment": deployment, "arm": arm}
    shown = [column for column in columns if not filtered.get(column)]
    table(rows, shown, f"traffic of {deployment}" if deployment else "traffic")
