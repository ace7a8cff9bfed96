"""`evalhub annotate`: human evaluation queues, labelling in the terminal, and judge agreement."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel

from evalhub.cli.output import api_errors, console, fail, number, print_json, table
from evalhub.client import Client

annotate_app = typer.Typer(
    help="Human evaluation: label answers on a rubric and see how far the LLM judge agrees.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@annotate_app.command("create")
def create(
    name: str,
    kind: Annotated[str, typer.Option(help="scale, labels or pairwise")] = "scale",
    run: Annotated[str | None, typer.Option(help="Label this eval run's answers")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="pairwise: the run that --run is compared with")
    ] = None,
    deployment: Annotated[
        str | None, typer.Option(help="Label a sample of this deployment's answers")
    ] = None,
    arm: Annotated[str | None, typer.Option(help="Only this arm's answers")] = None,
    sample: Annotated[int | None, typer.Option(help="How many items, drawn at random")] = None,
    scale: Annotated[str | None, typer.Option(help="scale: LOW-HIGH, default 1-5")] = None,
    labels: Annotated[
        str | None, typer.Option(help="labels: comma-separated, worst first (bad,ok,good)")
    ] = None,
    question: Annotated[str | None, typer.Option(help="What raters are asked")] = None,
    seed: Annotated[int, typer.Option(help="For the sample and the pairwise order")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Create a queue from an eval run (--run, or --run and --baseline for pairwise) or from a
    deployment's traffic (--deployment); its items are fixed from then on."""
    body: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "eval_run": run,
        "baseline_run": baseline,
        "deployment": deployment,
        "arm": arm,
        "sample": sample,
        "question": question,
        "seed": seed,
    }
    if scale is not None:
        low, _, high = scale.partition("-")
        if not (low.strip().lstrip("-").isdigit() and high.strip().isdigit()):
            fail(f"--scale is LOW-HIGH, such as 1-5, not {scale!r}")
        body["scale"] = [int(low), int(high)]
    if labels is not None:
        body["labels"] = [label.strip() for label in labels.split(",") if label.strip()]
    with api_errors(), Client.connect() as client:
        queue = client.post("/annotations/queues", {k: v for k, v in body.items() if v is not None})
    if as_json:
        print_json(queue)
        return
    console.print(
        f"queue {queue['name']}: {queue['items']} items, {queue['kind']} "
        f"({' / '.join(queue['choices'])}); label them with `evalhub annotate label {name}`"
    )


@annotate_app.command("list")
def list_queues(as_json: JsonFlag = False) -> None:
    """Queues, newest first, with their progress."""
    with api_errors(), Client.connect() as client:
        queues = list(client.paged("/annotations/queues", limit=100))
    if as_json:
        print_json(queues)
        return
    rows = [{**q, "raters": ", ".join(q["raters"]), "source": _source(q)} for q in queues]
    table(rows, ["name", "kind", "source", "items", "labelled", "labels", "raters"], "queues")


@annotate_app.command("show")
def show(name: str, as_json: JsonFlag = False) -> None:
    """A queue's progress and the agreement of each LLM judge with the humans, and of raters."""
    with api_errors(), Client.connect() as client:
        queue = client.get(f"/annotations/queues/{name}")
        report = client.get(f"/annotations/queues/{name}/agreement")
    if as_json:
        print_json({"queue": queue, "agreement": report})
        return
    console.print(
        f"{queue['name']} ({queue['kind']}: {queue['question']}) from {_source(queue)}: "
        f"{queue['labelled']}/{queue['items']} items labelled, {queue['labels']} labels by "
        f"{len(queue['raters'])} rater(s)",
        highlight=False,
    )
    rows = [_agreement(row) for row in report["judges"] + report["raters"]]
    if rows:
        table(rows, ["left", "right", "n", "items", "raw", "kappa"], "agreement")
        console.print(f"method: {report['method']}", highlight=False)
    else:
        console.print("no agreement yet: it needs labels (and judge scores, or two raters)")


@annotate_app.command("label")
def label(name: str) -> None:
    """Work through the queue: each item is shown, you type a choice and Enter (q to stop).
    Your token's name is the rater; labelling an item again replaces your label."""
    with api_errors(), Client.connect() as client:
        queue = client.get(f"/annotations/queues/{name}")
        choices = ["a", "b", "tie"] if queue["kind"] == "pairwise" else queue["choices"]
        while True:
            step = client.get(f"/annotations/queues/{name}/next")
            item = step["item"]
            if item is None:
                console.print(f"all {step['total']} items of {name} are labelled by you")
                return
            _show_item(item, step, queue)
            value = _ask(choices)
            if value is None:
                console.print(f"stopped: {step['done']}/{step['total']} labelled by you")
                return
            client.put(f"/annotations/queues/{name}/items/{item['id']}/label", {"value": value})


@annotate_app.command("export")
def export(
    name: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here")] = None,
) -> None:
    """Every label as a JSON line, with its item's prompt and answers (stdout unless -o)."""
    with api_errors(), Client.connect() as client:
        content = client.get(f"/annotations/queues/{name}/export")
    text = content.decode("utf-8") if isinstance(content, bytes) else (content or "")
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {len(text.splitlines())} labels to {output}")


@annotate_app.command("register")
def register(name: str, dataset: str) -> None:
    """Register the labelled items as a dataset version of eval cases (labels under metadata)."""
    with api_errors(), Client.connect() as client:
        result = client.post(f"/annotations/queues/{name}/register", {"dataset": dataset})
    state = "registered" if result["created"] else "already registered as"
    console.print(f"{state} {result['version']['ref']}: {result['rows']} labelled items")


@annotate_app.command("delete")
def delete(name: str) -> None:
    """Delete a queue with its items and labels (export them first to keep them)."""
    with api_errors(), Client.connect() as client:
        client.delete(f"/annotations/queues/{name}")
    console.print(f"deleted queue {name}")


def _source(queue: dict[str, Any]) -> str:
    source = queue["source"]
    if "eval_run" in source:
        baseline = source.get("baseline_run")
        return source["eval_run"] + (f" vs {baseline}" if baseline else "")
    return f"deployment {source['deployment']}" + (f" arm {source['arm']}" if source["arm"] else "")


def _agreement(row: dict[str, Any]) -> dict[str, Any]:
    raw = f"{number(row['raw'])} [{number(row['raw_low'])}, {number(row['raw_high'])}]"
    kappa = "undefined (one label only)"
    if row["kappa"] is not None:
        kappa = f"{number(row['kappa'])} [{number(row['kappa_low'])}, {number(row['kappa_high'])}]"
    return {**row, "raw": raw, "kappa": kappa}


def _show_item(item: dict[str, Any], step: dict[str, Any], queue: dict[str, Any]) -> None:
    console.rule(
        f"{queue['name']}: item {step['done'] + 1} of {step['total']} ({item['source_id']})"
    )
    for message in item["prompt"]:
        console.print(f"[bold]{message['role']}[/]: {escape(str(message['content']))}")
    if item["reference"]:
        console.print(f"[dim]reference[/]: {escape(item['reference'])}")
    if queue["kind"] == "pairwise":
        console.print(Panel(escape(item["a"] or ""), title="a"))
        console.print(Panel(escape(item["b"] or ""), title="b"))
    else:
        console.print(Panel(escape(item["output"] or ""), title="answer"))
    console.print(queue["question"], highlight=False)


def _ask(choices: list[str]) -> str | None:
    prompt = f"{' / '.join(choices)} (q to stop)"
    while True:
        answer = typer.prompt(prompt, default="", show_default=False).strip()
        if answer == "q":
            return None
        if answer in choices:
            return answer
        console.print(f"one of: {', '.join(choices)}", highlight=False)
