"""`evalhub monitor`: monitor passes, rollout decisions and feedback, through the REST API."""

from __future__ import annotations

from typing import Annotated

import typer

from evalhub.cli.output import api_errors, console, print_json, table
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
    """Run one monitor pass now (online scoring, then every rollout under analysis) and print
    each decision: for cron, and to watch a rollout step by step."""
    with api_errors(), Client.connect() as client:
        report = client.post("/monitors/run", {"deployment": deployment})
    if as_json:
        print_json(report)
        return
    console.print(f"scored {report['scored']} sampled record(s)")
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
