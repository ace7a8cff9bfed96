"""`evalhub monitor`: monitor passes, rollout decisions and feedback, through the REST API."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from evalhub.cli.output import api_errors, console, fail, number, print_json, table
from evalhub.client import Client

monitor_app = typer.Typer(
    help="Production monitoring: feedback, online scores, the rollout controller.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _verdicts(decision: dict) -> str:
    return ", ".join(
        f"{m['name']}: {m['verdict']}"
        + (f" [{m['low']:+.3f}, {m['high']:+.3f}]" if m["low"] is not None else "")
        for m in decision["metrics"]
    )


def _print_decisions(decisions: list[dict], title: str) -> None:
    rows = [
        {
            **d,
            "time": d["created_at"][:19].replace("T", " "),
            "weight": f"{d['weight']:g}%",
            "metrics": _verdicts(d),
        }
        for d in decisions
    ]
    table(rows, ["time", "deployment", "weight", "action", "reason", "metrics"], title)


@monitor_app.command("run")
def monitor_run(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run one monitor pass now (online scoring, every rollout under analysis, the alert rules)
    and print each decision: for cron, and to watch a rollout step by step."""
    with api_errors(), Client.connect() as client:
        report = client.post("/monitors/run", {"deployment": deployment})
    if as_json:
        print_json(report)
        return
    console.print(
        f"scored {report['scored']} sampled record(s); {report['alerts_fired']} alert(s) fired"
    )
    if report["decisions"]:
        _print_decisions(report["decisions"], "rollout decisions")
        if any(d["method"] for d in report["decisions"]):
            console.print(f"method: {report['decisions'][0]['method']}", highlight=False)
    else:
        console.print("no rollout under analysis is running")


@monitor_app.command("decisions")
def monitor_decisions(
    deployment: str,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The rollout controller's decisions for a deployment, with their numbers and reasons."""
    with api_errors(), Client.connect() as client:
        page = client.get(f"/deployments/{deployment}/decisions", limit=limit)
    if as_json:
        print_json(page["data"])
        return
    _print_decisions(page["data"], f"decisions of {deployment}")


@monitor_app.command("feedback")
def monitor_feedback(
    request_id: Annotated[str, typer.Argument(help="The gateway's X-Evalhub-Request-Id")],
    score: Annotated[float, typer.Argument(help="1 or 0 for thumbs; else on the name's scale")],
    name: Annotated[str, typer.Option(help="What is scored")] = "thumbs",
    comment: Annotated[str | None, typer.Option(help="Free text")] = None,
) -> None:
    """Score a gateway answer; a second score of the same name replaces the first."""
    body = {"request_id": request_id, "score": score, "name": name, "comment": comment}
    with api_errors(), Client.connect() as client:
        feedback = client.post("/feedback", body)
    verb = "replaced" if feedback["replaced"] else "recorded"
    console.print(
        f"{verb} {feedback['name']}={feedback['score']:g} for {request_id} "
        f"({feedback['deployment'] or '-'} / {feedback['arm'] or '-'} / {feedback['version']})",
        highlight=False,
    )


@monitor_app.command("feedback-list")
def monitor_feedback_list(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment")] = None,
    arm: Annotated[str | None, typer.Option(help="Only this arm")] = None,
    version: Annotated[str | None, typer.Option(help="Only this exact version, e.g. bot/3")] = None,
    name: Annotated[str | None, typer.Option(help="Only feedback of this name")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Feedback, newest first."""
    with api_errors(), Client.connect() as client:
        page = client.get(
            "/feedback", deployment=deployment, arm=arm, version=version, name=name, limit=limit
        )
    if as_json:
        print_json(page["data"])
        return
    rows = [{**f, "time": f["created_at"][:19].replace("T", " ")} for f in page["data"]]
    table(rows, ["time", "request_id", "deployment", "arm", "version", "name", "score"], "feedback")


def _columns(result: dict) -> list[dict]:
    rows = []
    for column in result["summary"]["columns"]:
        rows.append(
            {
                **column,
                "score": f"{column['score']:.4g}",
                "threshold": f"{column['threshold']:.4g}",
                "drifted": "DRIFT" if column["drifted"] else "-",
            }
        )
    return rows


def _print_drift(check: dict) -> None:
    table(
        _columns(check),
        ["column", "kind", "method", "score", "threshold", "drifted"],
        f"{check['id']}: {check['deployment']}{'/' + check['arm'] if check['arm'] else ''}",
    )
    summary = check["summary"]
    embedded = summary.get("embedding_drifted")
    console.print(
        f"drifted columns: {summary['share_drifted']:.0%} (threshold {summary['drift_share']:.0%})"
        + (
            ""
            if embedded is None
            else f"; prompt embeddings: {'DRIFT' if embedded else 'no drift'}"
        )
        + f"; verdict: {'DRIFT' if check['drifted'] else 'no drift'}",
        highlight=False,
    )
    for skipped in summary.get("skipped", []):
        console.print(f"skipped {skipped['column']}: {skipped['reason']}", highlight=False)
    if check["report_url"]:
        console.print(f"report: {check['report_url']}", highlight=False)


def _window(last: int | None, first: int | None, since: str | None, until: str | None,
            dataset: str | None = None) -> dict | None:  # fmt: skip
    window = {"last": last, "first": first, "since": since, "until": until, "dataset": dataset}
    window = {k: v for k, v in window.items() if v is not None}
    return window or None


@monitor_app.command("drift")
def monitor_drift(
    deployment: Annotated[str, typer.Option(help="The deployment whose traffic is checked")],
    arm: Annotated[str | None, typer.Option(help="Only this arm's traffic")] = None,
    last: Annotated[int | None, typer.Option(help="Current window: the last N requests")] = None,
    since: Annotated[str | None, typer.Option(help="Current window: from this ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="Current window: until this ISO time")] = None,
    reference_first: Annotated[
        int | None, typer.Option(help="Reference: the deployment's first N requests")
    ] = None,
    reference_since: Annotated[str | None, typer.Option(help="Reference: from this time")] = None,
    reference_until: Annotated[str | None, typer.Option(help="Reference: until this time")] = None,
    reference_dataset: Annotated[
        str | None, typer.Option(help="Reference: a dataset version, e.g. train/2")
    ] = None,
    embeddings: Annotated[bool, typer.Option(help="Embedding drift of the prompts")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Run a drift check now: the current window against the reference (default: the last
    1,000 requests against the deployment's first 1,000)."""
    body: dict = {"deployment": deployment, "arm": arm, "embeddings": embeddings}
    current = _window(last, None, since, until)
    reference = _window(None, reference_first, reference_since, reference_until,
                        reference_dataset)  # fmt: skip
    if current:
        body["current"] = current
    if reference:
        body["reference"] = reference
    with api_errors(), Client.connect() as client:
        check = client.post("/monitors/drift", body)
    if as_json:
        print_json(check)
        return
    _print_drift(check)


@monitor_app.command("drift-show")
def monitor_drift_show(
    check_id: str,
    report: Annotated[
        str | None, typer.Option(help="Write Evidently's HTML report to this file")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A stored drift check; --report saves its HTML report."""
    with api_errors(), Client.connect() as client:
        check = client.get(f"/monitors/drift/{check_id}")
        if report:
            html = client.request("GET", f"/monitors/drift/{check_id}/report")
            data = html if isinstance(html, bytes) else str(html).encode()
            with open(report, "wb") as handle:
                handle.write(data)
    if as_json:
        print_json(check)
        return
    _print_drift(check)
    if report:
        console.print(f"wrote {report}", highlight=False)


@monitor_app.command("export")
def monitor_export(
    deployment: Annotated[str, typer.Option(help="Whose requests")],
    dataset: Annotated[str, typer.Option(help="The dataset to register a version of")],
    as_: Annotated[str, typer.Option("--as", help="eval (cases) or chat (training rows)")],
    feedback: Annotated[
        str | None, typer.Option(help="Only requests with negative (or positive) feedback")
    ] = None,
    drifted: Annotated[
        str | None, typer.Option(help="Only the requests of this drift check's window")
    ] = None,
    arm: Annotated[str | None, typer.Option(help="Only this arm")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows")] = 10_000,
) -> None:
    """Register production requests as a dataset version, each row with its request id: the
    loop from production back to evaluation and fine-tuning."""
    body = {"deployment": deployment, "dataset": dataset, "as": as_, "feedback": feedback,
            "drifted": drifted, "arm": arm, "limit": limit}  # fmt: skip
    with api_errors(), Client.connect() as client:
        result = client.post("/monitors/export", body)
    version = result["version"]
    verb = "registered" if result["created"] else "already registered as"
    console.print(
        f"{verb} {dataset}/{version['version']}: {result['rows']} {as_} row(s), {version['digest']}",
        highlight=False,
    )


_AGO = re.compile(r"^([0-9]+)(s|min|h|d)$")
_AGO_UNITS = {"s": "seconds", "min": "minutes", "h": "hours", "d": "days"}


def _since(value: str | None) -> str | None:
    """`1h`, `30min`, `2d` ago, or an ISO time, as the ISO time the API takes."""
    if value is None:
        return None
    ago = _AGO.fullmatch(value)
    if ago:
        delta = timedelta(**{_AGO_UNITS[ago.group(2)]: int(ago.group(1))})
        return (datetime.now(UTC) - delta).isoformat()
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        fail(f"{value!r} is not a time: give a duration ago (90s, 30min, 1h, 2d) or an ISO time")


def _scores(scores: dict) -> str:
    return ", ".join(f"{name}={s['mean']:.3g} (n={s['count']})" for name, s in scores.items())


@monitor_app.command("quality")
def monitor_quality(
    deployment: Annotated[str, typer.Option(help="The deployment")],
    arm: Annotated[str | None, typer.Option(help="Only this arm")] = None,
    version: Annotated[str | None, typer.Option(help="Only this exact version, e.g. bot/3")] = None,
    since: Annotated[
        str | None, typer.Option(help="From: 1h, 30min, 2d ago or an ISO time")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Until: a duration ago or an ISO time")] = None,
    bucket: Annotated[str | None, typer.Option(help="Per time bucket: 5min, 1h, 1d")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Requests, errors, latency, cost, online metrics and feedback per arm and version (default
    window: the last 24 h)."""
    with api_errors(), Client.connect() as client:
        report = client.get(
            "/monitors/quality",
            deployment=deployment,
            arm=arm,
            version=version,
            since=_since(since),
            until=_since(until),
            bucket=bucket,
        )
    if as_json:
        print_json(report)
        return
    rows = [
        {
            **row,
            "bucket": (row["bucket"] or "")[:19].replace("T", " "),
            "errors": f"{row['error_rate']:.1%}",
            "ms p50/95/99": "/".join(number(row[f"latency_{p}_ms"]) for p in ("p50", "p95", "p99")),
            "cost": number(row["cost"]),
            "fb rate": f"{row['feedback_rate']:.1%}",
            "metrics": _scores(row["metrics"]),
            "feedback": _scores(row["feedback"]),
        }
        for row in report["rows"]
    ]
    # The time to first token and the token counts are in --json (a table that fits 100 columns).
    columns = ["arm", "version", "requests", "errors", "ms p50/95/99", "cost", "metrics",
               "fb rate", "feedback"]  # fmt: skip
    window = f"{report['since'][:19]} to {report['until'][:19]}".replace("T", " ")
    table(rows, ["bucket", *columns] if bucket else columns, f"{deployment}, {window} UTC")


@monitor_app.command("cost")
def monitor_cost(
    deployment: Annotated[str, typer.Option(help="The deployment")],
    since: Annotated[
        str | None, typer.Option(help="From: 1h, 30min, 2d ago or an ISO time")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Until: a duration ago or an ISO time")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cost, requests and tokens per UTC day, arm and version (default: the last 24 h)."""
    with api_errors(), Client.connect() as client:
        report = client.get(
            "/monitors/cost", deployment=deployment, since=_since(since), until=_since(until)
        )
    if as_json:
        print_json(report)
        return
    rows = [{**day, "cost": number(day["cost"])} for day in report["days"]]
    table(rows, ["day", "arm", "version", "requests", "tokens", "cost"], f"cost of {deployment}")
    console.print(
        f"total: {number(report['cost'])} for {report['requests']} request(s), "
        f"{report['tokens']} token(s)",
        highlight=False,
    )


@monitor_app.command("alerts")
def monitor_alerts(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Fired alerts, newest first, with their webhook delivery."""
    with api_errors(), Client.connect() as client:
        page = client.get("/alerts", deployment=deployment, rule=rule, limit=limit)
    if as_json:
        print_json(page["data"])
        return
    rows = [
        {**a, "time": a["created_at"][:19].replace("T", " "), "value": number(a["value"])}
        for a in page["data"]
    ]
    columns = ["id", "time", "rule", "deployment", "arm", "severity", "condition", "value",
               "delivery"]  # fmt: skip
    table(rows, columns, "alerts")


@monitor_app.command("alert-rule")
def monitor_alert_rule(
    name: Annotated[str, typer.Argument(help="The rule's name")],
    metric: Annotated[
        str,
        typer.Option(
            help="error_rate, latency_p50|p95|p99, ttft_p50, cost, requests, feedback_rate, "
            "metric:<online metric>, feedback:<name> or cost_per_day"
        ),
    ],
    deployment: Annotated[str, typer.Option(help="The deployment watched")],
    above: Annotated[float | None, typer.Option(help="Fire when the value is above this")] = None,
    below: Annotated[float | None, typer.Option(help="Fire when the value is below this")] = None,
    arm: Annotated[str | None, typer.Option(help="Only this arm (default: all)")] = None,
    window: Annotated[int, typer.Option(help="Trailing window in seconds")] = 300,
    severity: Annotated[str, typer.Option(help="info, warning or critical")] = "warning",
    webhook: Annotated[str | None, typer.Option(help="POST each alert to this URL")] = None,
    secret: Annotated[
        str | None,
        typer.Option(help="Sign webhook bodies with it", envvar="EVALHUB_WEBHOOK_SECRET"),
    ] = None,
) -> None:
    """Create an alert rule, checked on every monitor pass."""
    if (above is None) == (below is None):
        fail("give exactly one of --above X or --below X")
    comparison, threshold = (">", above) if above is not None else ("<", below)
    body = {"name": name, "metric": metric, "deployment": deployment, "arm": arm,
            "window_seconds": window, "comparison": comparison, "threshold": threshold,
            "severity": severity, "webhook_url": webhook, "secret": secret}  # fmt: skip
    with api_errors(), Client.connect() as client:
        rule = client.post("/alerts/rules", body)
    console.print(
        f"rule {rule['name']}: {rule['metric']} {rule['comparison']} {rule['threshold']:g} on "
        f"{rule['deployment']}{'/' + rule['arm'] if rule['arm'] else ''} over "
        f"{rule['window_seconds']} s ({rule['severity']})"
        + (f", to {rule['webhook_url']}" if rule["webhook_url"] else "")
        + (" signed" if rule["has_secret"] else ""),
        highlight=False,
    )


@monitor_app.command("alert-rules")
def monitor_alert_rules(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The alert rules (secrets are never shown)."""
    with api_errors(), Client.connect() as client:
        rules = client.get("/alerts/rules", deployment=deployment)
    if as_json:
        print_json(rules)
        return
    rows = [
        {**r, "condition": f"{r['metric']} {r['comparison']} {r['threshold']:g}",
         "signed": "yes" if r["has_secret"] else ""}
        for r in rules
    ]  # fmt: skip
    columns = ["name", "deployment", "arm", "condition", "window_seconds", "severity",
               "webhook_url", "signed"]  # fmt: skip
    table(rows, columns, "alert rules")
