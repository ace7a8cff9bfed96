"""`evalhub eval run | show | list | compare` and `evalhub gate`.

Where a run executes:
- With `--endpoint`, here: the endpoint is one this machine reaches, and its API key (read from
  the variable `--api-key-env` names) never leaves this machine. Generations go through a cache
  in EVALHUB_HOME/cache; the finished run is then recorded on the server (`POST /evals/import`).
- Without it, `--model` is a registry reference and the server runs it as a job (against the
  endpoint that serves registry models); the CLI follows its events. In-process (no
  EVALHUB_URL) the CLI runs that job itself while it waits.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evalhub.cli.output import api_errors, console, errors, fail, fields, number, print_json, table
from evalhub.client import ApiError, Client
from evalhub.eval.gate import GatePolicy, GateResult, gate
from evalhub.eval.record import EvalRun
from evalhub.eval.report import markdown_summary, write_reports
from evalhub.eval.runner import Progress as RunProgress
from evalhub.eval.runner import RunOptions, Target, run_suite, save_run
from evalhub.eval.suite import SuiteError, load_suite
from evalhub.settings import Settings
from registry.errors import RegistryError
from registry.names import parse_ref

eval_app = typer.Typer(
    help="Evaluation runs: run a suite, show, list, compare.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Endpoint = Annotated[
    str | None,
    typer.Option(
        help="OpenAI-compatible base URL; models are then names at it, and runs happen here"
    ),
]
ApiKeyEnv = Annotated[
    str | None,
    typer.Option(help="Environment variable holding the endpoint's API key (needs --endpoint)"),
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")]
Refresh = Annotated[bool, typer.Option("--refresh", help="Generate again, overwrite the cache.")]
Concurrency = Annotated[int, typer.Option(min=1, max=64, help="Generations in flight")]

POLL_SECONDS = 0.5
FINISHED = ("completed", "failed")


class EvalFailure(Exception):
    """A run that could not start or finish; its message is one line for the user."""


# -- running -------------------------------------------------------------------------------------


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[RunProgress], None]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[cached]} cached"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, cached=0)

        def update(progress: RunProgress) -> None:
            bar.update(
                task,
                description=f"{label} {progress.phase}",
                completed=progress.done,
                total=progress.total,
                cached=progress.cached,
            )

        yield update


def _api_key(endpoint: str | None, api_key_env: str | None) -> SecretStr:
    if api_key_env is None:
        return SecretStr("EMPTY")
    if endpoint is None:
        raise EvalFailure("--api-key-env needs --endpoint (registry models are served for you)")
    value = os.environ.get(api_key_env)
    if not value:
        raise EvalFailure(f"the environment variable {api_key_env} named by --api-key-env is unset")
    return SecretStr(value)


def _dataset_resolver(client: Client, work: Path) -> Callable[[str], Path]:
    """Registry datasets for local runs, downloaded through the API."""

    def resolve(reference: str) -> Path:
        parsed = parse_ref(reference)
        version = parsed.version or client.get(f"/datasets/{parsed.name}")["latest_version"]
        if version is None:
            raise ValueError(f"dataset {parsed.name!r} has no versions yet")
        content = client.request("GET", f"/datasets/{parsed.name}/versions/{version}/content")
        path = work / f"{parsed.name}-{version}.jsonl"
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return path

    return resolve


def run_local(
    client: Client,
    suite_path: Path,
    model: str,
    endpoint: str,
    api_key: SecretStr,
    options: RunOptions,
) -> EvalRun:
    """Runs against the endpoint from this machine, then records the run on the server."""
    from evalhub.eval.cache import SQLiteCache
    from evalhub.eval.service import check_endpoint, declared_dataset, metric_runtime
    from evalhub.eval.store import new_run_id
    from evalhub.eval.suite import is_file_reference

    settings = Settings()
    try:
        base_url = check_endpoint(endpoint)
    except RegistryError as error:
        raise EvalFailure(error.message) from error
    cache = None if options.no_cache else SQLiteCache(settings.home / "cache" / "generations.db")
    suite_text = suite_path.read_text(encoding="utf-8") if suite_path.is_file() else ""
    runtime = metric_runtime(settings, suite_text, cache)
    with tempfile.TemporaryDirectory(prefix="evalhub-data-") as work:
        suite = load_suite(
            suite_path, _dataset_resolver(client, Path(work)), metric_runtime=runtime
        )
    target = Target(base_url=base_url, model=model, api_key=api_key)
    with progress_bar(f"{suite.name} on {model}") as update:
        run = run_suite(
            suite,
            target,
            cache=cache,
            options=options,
            progress=update,
            run_id=new_run_id(),
            metric_runtime=runtime,
        )
    if cache is not None:
        cache.close()
    body: dict[str, Any] = {"run": run.model_dump(mode="json")}
    if suite_text:  # its cases' inputs, for error analysis and annotation on the server
        body |= {"suite": suite_text, "filename": suite_path.name}
        declared = declared_dataset(suite_text)
        if declared is not None and is_file_reference(declared):
            body["dataset"] = (suite_path.parent / declared).read_text(encoding="utf-8")
    client.post("/evals/import", body)
    return run


def _suite_request(
    suite_path: Path, model: str, options: RunOptions, executor: str, batch_size: int
) -> dict[str, Any]:
    from evalhub.eval.service import declared_dataset
    from evalhub.eval.suite import is_file_reference

    try:
        text = suite_path.read_text(encoding="utf-8")
    except OSError as error:
        raise EvalFailure(f"cannot read {suite_path}: {error}") from error
    request: dict[str, Any] = {
        "suite": text,
        "filename": suite_path.name,
        "target": {"model": model},
        "options": options.model_dump(),
        "executor": executor,
        "batch_size": batch_size,
    }
    declared = declared_dataset(text)
    if declared is not None and is_file_reference(declared):
        dataset = suite_path.parent / declared
        try:
            request["dataset"] = dataset.read_text(encoding="utf-8")
        except OSError as error:
            raise EvalFailure(
                f"{suite_path}: dataset file {dataset} cannot be read: {error}"
            ) from error
    return request


def run_on_server(
    client: Client,
    suite_path: Path,
    model: str,
    options: RunOptions,
    executor: str = "local",
    batch_size: int = 16,
) -> EvalRun:
    """Submits the run as a job and follows its events until it finishes; on Ray, prints them."""
    request = _suite_request(suite_path, model, options, executor, batch_size)
    started = client.post("/evals", request)
    run_id = started["run"]["id"]
    errors.print(f"queued {run_id} (job {started['job_id']})", highlight=False)
    after = None
    with progress_bar(f"{started['run']['suite_name']} on {model}") as update:
        while True:
            info = client.get(f"/evals/{run_id}")  # before the events, so none can follow it
            for event in client.get(f"/evals/{run_id}/events", after=after):
                after = event["id"]
                data = event.get("data") or {}
                if "done" in data:
                    update(RunProgress(data["phase"], data["done"], data["total"], data["cached"]))
                elif executor != "local":  # where the batches ran
                    errors.print(f"  {event['message']}", highlight=False)
            if info["status"] in FINISHED:
                break
            time.sleep(POLL_SECONDS)
    if info["status"] != "completed":
        raise EvalFailure(f"eval run {run_id} failed: {info['error']}")
    return EvalRun.model_validate(client.get(f"/evals/{run_id}/run"))


def execute(
    client: Client,
    suite_path: Path,
    model: str,
    *,
    endpoint: str | None,
    api_key_env: str | None,
    options: RunOptions,
    executor: str = "local",
    batch_size: int = 16,
) -> EvalRun:
    api_key = _api_key(endpoint, api_key_env)
    if endpoint:
        if executor != "local":
            raise EvalFailure(
                f"--executor {executor} runs the suite as a server job; with --endpoint it runs "
                "here: drop --endpoint and name a registry model"
            )
        return run_local(client, suite_path, model, endpoint, api_key, options)
    return run_on_server(client, suite_path, model, options, executor, batch_size)


def run_gate(
    client: Client,
    suites: list[Path],
    candidate: str,
    baseline: str,
    policy: GatePolicy,
    *,
    endpoint: str | None = None,
    api_key_env: str | None = None,
    options: RunOptions | None = None,
) -> tuple[GateResult, list[tuple[EvalRun, EvalRun | None]]]:
    """Runs each suite on the baseline and the candidate and gates them: what `evalhub gate`
    and the pytest plug-in decide on."""
    options = options or RunOptions()
    pairs: list[tuple[EvalRun, EvalRun | None]] = []
    for path in suites:
        runs = {
            role: execute(
                client, path, ref, endpoint=endpoint, api_key_env=api_key_env, options=options
            )
            for role, ref in (("baseline", baseline), ("candidate", candidate))
        }
        pairs.append((runs["candidate"], runs["baseline"]))
    return gate(pairs, policy), pairs


@contextmanager
def failures(code: int) -> Iterator[None]:
    """Every expected failure becomes one clear message (a suite's: one line per problem)."""
    try:
        yield
    except SuiteError as error:
        fail("the suite cannot run:\n" + "\n".join(str(p) for p in error.problems), code)
    except (ApiError, RegistryError) as error:
        fail(error.message, code)
    except EvalFailure as error:
        fail(str(error), code)


def _print_run(run: EvalRun) -> None:
    rows = [
        {
            "metric": name,
            "value": number(summary.aggregate.value),
            "n": summary.aggregate.count,
            "threshold": number(summary.spec.threshold),
            "passed": "" if summary.passed is None else ("yes" if summary.passed else "NO"),
        }
        for name, summary in run.metrics.items()
    ]
    table(rows, ["metric", "value", "n", "threshold", "passed"], f"{run.suite_name} {run.run_id}")
    cached = sum(g.cached for r in run.results for g in r.generations)
    total = sum(len(r.generations) for r in run.results)
    console.print(
        f"{run.status}: overall {number(run.overall_score)}, thresholds "
        f"{'passed' if run.passed else 'FAILED'}; {total} generations, {cached} from cache",
        highlight=False,
    )


# -- commands ------------------------------------------------------------------------------------


@eval_app.command("run")
def eval_run(
    suite: Annotated[Path, typer.Argument(help="The suite YAML")],
    model: Annotated[str, typer.Option(help="A registry reference, or with --endpoint a name")],
    endpoint: Endpoint = None,
    api_key_env: ApiKeyEnv = None,
    output: Annotated[Path | None, typer.Option(help="Write the whole run as JSON")] = None,
    no_cache: NoCache = False,
    refresh: Refresh = False,
    concurrency: Concurrency = 8,
    executor: Annotated[
        str,
        typer.Option(
            help="local: the server's worker runs the cases; ray: Ray tasks of --batch-size "
            "cases on the worker's Ray cluster (EVALHUB_RAY_ADDRESS)"
        ),
    ] = "local",
    batch_size: Annotated[int, typer.Option(min=1, help="Cases per Ray task")] = 16,
) -> None:
    """Run a suite against a model; exits 1 when the run fails."""
    options = RunOptions(concurrency=concurrency, no_cache=no_cache, refresh=refresh)
    with failures(1), Client.connect(worker=True) as client:
        run = execute(
            client, suite, model, endpoint=endpoint, api_key_env=api_key_env, options=options,
            executor=executor, batch_size=batch_size,
        )  # fmt: skip
    if output is not None:
        save_run(run, output)
    _print_run(run)
    if run.status != "completed":
        fail(f"eval run {run.run_id} failed: {run.error}")


@eval_app.command("show")
def eval_show(run_id: str, as_json: JsonFlag = False) -> None:
    """Show a stored run: target, digests, status and metrics."""
    with api_errors(), Client.connect() as client:
        info = client.get(f"/evals/{run_id}")
    if as_json:
        print_json(info)
        return
    fields(info, [
        "id", "status", "error", "suite_name", "suite_version", "suite_digest", "dataset_ref",
        "dataset_version", "dataset_digest", "model", "model_version", "model_digest",
        "base_url", "endpoint_model", "overall_score", "passed", "case_count", "job_id",
        "created_by", "created_at", "finished_at",
    ])  # fmt: skip
    rows = [
        {"metric": name, **{k: _cell(v) for k, v in summary.items()}}
        for name, summary in info["metrics"].items()
    ]
    table(rows, ["metric", "value", "count", "threshold", "passed"], "metrics")


def _cell(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


@eval_app.command("list")
def eval_list(
    suite: Annotated[str | None, typer.Option(help="Only runs of this suite")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Stored runs, newest first."""
    with api_errors(), Client.connect() as client:
        page = client.get("/evals", suite=suite, limit=limit)
    if as_json:
        print_json(page["data"])
        return
    rows = [{**row, "overall_score": _cell(row["overall_score"])} for row in page["data"]]
    columns = [
        "id",
        "status",
        "suite_name",
        "model",
        "model_version",
        "overall_score",
        "passed",
        "created_at",
    ]
    table(rows, columns, "eval runs")


@eval_app.command("compare")
def eval_compare(
    baseline: Annotated[str, typer.Argument(help="Baseline run id")],
    candidate: Annotated[str, typer.Argument(help="Candidate run id")],
    as_json: JsonFlag = False,
) -> None:
    """Paired comparison of two stored runs: per metric the change, its 95% CI and p-value."""
    with api_errors(), Client.connect() as client:
        comparison = client.get("/evals/compare", baseline=baseline, candidate=candidate)
    if as_json:
        print_json(comparison)
        return
    rows = [
        {
            "metric": name,
            "baseline": _cell(metric["baseline_mean"]),
            "candidate": _cell(metric["candidate_mean"]),
            "change": _cell(metric["difference"]),
            "95% CI": f"[{number(metric['ci_low'])}, {number(metric['ci_high'])}]",
            "interval": metric["interval"],
            "p": _cell(metric["p_value"]),
            "W/T/L": f"{metric['wins']}/{metric['ties']}/{metric['losses']}",
        }
        for name, metric in comparison["metrics"].items()
    ]
    columns = ["metric", "baseline", "candidate", "change", "95% CI", "interval", "p", "W/T/L"]
    table(rows, columns, f"{comparison['shared_cases']} shared cases")
    for note in comparison["notes"]:
        console.print(f"note: {note}", highlight=False)
    for warning in comparison["warnings"]:
        console.print(f"warning: {warning}", highlight=False)


@eval_app.command("errors")
def eval_errors(
    run: Annotated[str, typer.Argument(help="The run to analyse")],
    baseline: Annotated[
        str | None, typer.Option(help="Show the cases that regressed against this run")
    ] = None,
    metric: Annotated[str | None, typer.Option(help="Default: the first 0/1 metric")] = None,
    below: Annotated[float, typer.Option(help="A score below this share of its scale fails")] = 0.5,
    clusters: Annotated[int, typer.Option(min=1, max=50, help="Clusters of the prompts")] = 4,
    export: Annotated[
        str | None, typer.Option(help="Export a group's failing cases: slice:TAG, cluster:N, all")
    ] = None,
    export_as: Annotated[
        str, typer.Option("--as", help="chat (training rows) or eval (cases)")
    ] = "chat",
    dataset: Annotated[str | None, typer.Option(help="The dataset to register them in")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Where a run fails: its failing (or regressed) cases by slice, by metric and by clusters of
    similar prompts, with examples; --export turns a group into a new dataset version."""
    query: dict[str, Any] = {
        "baseline": baseline,
        "metric": metric,
        "below": below,
        "clusters": clusters,
    }
    if export is not None:
        if dataset is None:
            fail("--export needs --dataset NAME to register the rows in")
        body = {**query, "group": export, "as": export_as, "dataset": dataset}
        with api_errors(), Client.connect() as client:
            done = client.post(f"/evals/{run}/errors/export", body)
        if as_json:
            print_json(done)
            return
        state = "registered" if done["created"] else "already registered as"
        console.print(
            f"{state} {done['version']['ref']}: {done['rows']} {export_as} rows from {export} "
            f"of {run}",
            highlight=False,
        )
        return
    with api_errors(), Client.connect() as client:
        report = client.get(f"/evals/{run}/errors", **query)
    if as_json:
        print_json(report)
        return
    console.print(
        f"{report['failures']} of {report['cases']} cases fail: {report['rule']}", highlight=False
    )

    def rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                **g,
                "rate": f"{g['failure_rate']:.0%}",
                "terms": ", ".join(g["terms"]),
                "examples": "; ".join(
                    f"{e['case_id']}: {e['output'][:40]!r}" for e in g["examples"]
                ),
            }
            for g in groups
        ]

    table(rows(report["by_slice"]), ["name", "cases", "failures", "rate", "examples"], "by slice")
    table(
        report["by_metric"],
        ["metric", "cases", "failures"],
        f"by metric (score below {below:g} of its scale)",
    )
    columns = ["name", "cases", "failures", "rate", "terms", "examples"]
    table(rows(report["clusters"]), columns, "by meaning (clusters of the prompts)")
    console.print(
        f"export a group: evalhub eval errors {run} --export slice:TAG --as chat --dataset NAME",
        highlight=False,
    )


def gate_command(
    suite: Annotated[list[Path], typer.Option(help="A suite YAML; repeat for several")],
    candidate: Annotated[str, typer.Option(help="The model under test")],
    baseline: Annotated[str, typer.Option(help="The model to compare with, e.g. bot@production")],
    margin: Annotated[
        float, typer.Option(min=0, help="Tolerated drop, as a share of each metric's scale")
    ] = 0.02,
    require_non_inferiority: Annotated[
        bool,
        typer.Option(
            "--require-non-inferiority",
            help="Fail unless the 95% CI rules out a drop beyond the margin (needs big suites); "
            "by default only a shown drop beyond the margin fails",
        ),
    ] = False,
    endpoint: Endpoint = None,
    api_key_env: ApiKeyEnv = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here")] = None,
    summary: Annotated[Path | None, typer.Option(help="Write a Markdown summary here")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the gate and its runs as JSON")] = None,
    no_cache: NoCache = False,
    refresh: Refresh = False,
    concurrency: Concurrency = 8,
) -> None:
    """Gate a candidate against a baseline: exit 0 pass, 1 regression, 2 error."""
    options = RunOptions(concurrency=concurrency, no_cache=no_cache, refresh=refresh)
    policy = GatePolicy(margin=margin, require_non_inferiority=require_non_inferiority)
    with failures(2), Client.connect(worker=True) as client:
        result, pairs = run_gate(
            client, suite, candidate, baseline, policy,
            endpoint=endpoint, api_key_env=api_key_env, options=options,
        )  # fmt: skip
    write_reports(result, junit_path=junit, markdown_path=summary)
    if output is not None:
        document = {
            "decision": result.decision,
            "exit_code": result.exit_code,
            "gate": result.model_dump(mode="json"),
            "runs": [
                {"suite": c.suite_name, "candidate": c.model_dump(mode="json"),
                 "baseline": b.model_dump(mode="json") if b else None}
                for c, b in pairs
            ],
        }  # fmt: skip
        output.write_text(json.dumps(document, indent=2), encoding="utf-8")
    console.print(markdown_summary(result), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)
