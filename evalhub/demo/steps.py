"""Steps 2 to 7: the base and data, fine-tuning, evaluation, two canaries and drift."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from evalhub.cli.finetune import show_checkpoint_evals
from evalhub.demo.profiles import DEPLOYMENT, METHODS, SHIFTED_ITEMS, SHIFTED_WHO
from evalhub.demo.shell import Demo, DemoFailed, console, evalhub, heading, say, show_python

# -- 3. fine-tuning through the OpenAI-style API ---------------------------------------------

FINETUNE_CODE = """
from openai import OpenAI

client = OpenAI(base_url=EVALHUB_URL + "/v1", api_key=EVALHUB_TOKEN)
train = client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
job = client.fine_tuning.jobs.create(
    model="{base}", training_file=train.id, suffix="json", seed=0,
    method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": {batch}}}},
    extra_body={"evalhub": {  # evalhub's options: the method, and checkpoints scored by the suite
        "method": "{method}", {options}, "learning_rate": {lr}, "max_steps": {steps},
        "warmup_ratio": 0.05, "checkpoint_every": {every},
        "eval": {"suite": open("suite.yaml").read(), "metric": "exact_match", "every": {every}},
    }},
)
for event in client.fine_tuning.jobs.list_events(job.id):  # polled until the job ends
    print(event.message)
"""


def _fine_tune(demo: Demo, method: str, steps: int) -> dict[str, Any]:
    """One job through the stock `openai` client, its events printed as they arrive; returns the
    registered version and its selected checkpoint's exact match on the suite."""
    base = demo.base
    every, batch = base.sizes.eval_every, base.sizes.batch_size
    shown = {
        "{base}": base.name,
        "{lr}": str(base.learning_rate),
        "{options}": ", ".join(f"{json.dumps(k)}: {v!r}" for k, v in base.options),
        "{method}": method,
        "{steps}": str(steps),
        "{every}": str(every),
        "{batch}": str(batch),
    }
    code = FINETUNE_CODE
    for placeholder, value in shown.items():
        code = code.replace(placeholder, value)
    show_python(code)
    client = demo.openai
    with (demo.work / "train.jsonl").open("rb") as handle:
        train = client.files.create(file=handle, purpose="fine-tune")
    suite = (demo.work / "suite.yaml").read_text()
    job = client.fine_tuning.jobs.create(
        model=base.name,
        training_file=train.id,
        suffix="json",
        seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": batch}}},
        extra_body={
            "evalhub": {
                "method": method, **dict(base.options), "learning_rate": base.learning_rate,
                "max_steps": steps, "warmup_ratio": 0.05, "checkpoint_every": every,
                "eval": {"suite": suite, "metric": "exact_match", "every": every},
            }
        },
    )  # fmt: skip
    _follow_job(client, job.id)
    details = client.fine_tuning.jobs.retrieve(job.id).to_dict()
    if details["status"] != "succeeded":
        raise DemoFailed(f"the {method} job {job.id} ended {details['status']}: {details['error']}")
    scored = details["evalhub"]["checkpoint_eval"]
    show_checkpoint_evals(scored)
    version = str(details["evalhub"]["registered_version"])
    say(f"{details['fine_tuned_model']} is registered as {version}")
    return {"version": version, "steps": steps, "exact_match": scored["selected"]["value"]}


def _every_fifth(metrics: dict[str, Any]) -> bool:
    """Training progress at a fifth of the steps, not every step."""
    step, total = metrics.get("step", 0), metrics.get("total_steps", 1)
    return bool(step == total or step % max(1, total // 5) == 0)


def _follow_job(client: Any, job_id: str) -> None:
    """Prints the job's events oldest first as they arrive (progress every few steps, each
    checkpoint and its scores on the suite), until the job ends."""
    seen: set[str] = set()
    while True:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        for event in reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data):
            if event.id not in seen:
                seen.add(event.id)
                if event.type != "metrics" or _every_fifth(event.data or {}):
                    say(event.message)
        if status in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(1.0)


# -- 5-7. traffic through the gateway ----------------------------------------------------------

TRAFFIC_CODE = """
raw = client.chat.completions.with_raw_response.create(
    model="orders", messages=[{"role": "user", "content": sentence}], user=user, temperature=0,
)
answer = raw.parse().choices[0].message.content
raw.headers["x-evalhub-arm"], raw.headers["x-evalhub-model-version"]  # which arm, which version
"""


@dataclass(frozen=True)
class Answer:
    request_id: str
    arm: str
    version: str
    text: str
    expected: str


def _ask(demo: Demo, cases: list[dict[str, Any]]) -> list[Answer]:
    """Each case from a new user (arms are sticky per user), with the stock `openai` client."""
    client = demo.openai
    answers = []
    for case in cases:
        demo.users += 1
        raw = client.chat.completions.with_raw_response.create(
            model=DEPLOYMENT, messages=case["messages"], user=f"user-{demo.users}",
            temperature=0, max_tokens=48,
        )  # fmt: skip
        text = raw.parse().choices[0].message.content or ""
        answers.append(
            Answer(raw.headers["x-evalhub-request-id"], raw.headers["x-evalhub-arm"],
                   raw.headers["x-evalhub-model-version"], text, case["expected"])
        )  # fmt: skip
    return answers


def _thumbs(demo: Demo, answers: list[Answer]) -> None:
    """Users give a thumbs up to a right answer and a thumbs down to a wrong one; the first two
    through the CLI, the rest through POST /api/v1/feedback as an app would."""
    for index, answer in enumerate(answers):
        score = "1" if answer.text == answer.expected else "0"
        if index < 2:
            evalhub("monitor", "feedback", answer.request_id, score)
        else:
            demo.api("POST", "/feedback", {"request_id": answer.request_id, "score": int(score)})
    say(f"... and {max(0, len(answers) - 2)} more thumbs through POST /api/v1/feedback")


def _until_decided(demo: Demo, *, feedback: bool) -> dict[str, Any]:
    """Sends traffic in batches until the controller ends the rollout (it runs every monitor
    pass, inside `evalhub serve`); returns the deployment as it ended."""
    sent: list[Answer] = []
    while True:
        deployment = demo.api("GET", f"/deployments/{DEPLOYMENT}")
        if deployment["rollout"]["status"] != "running":
            break
        to_canary = sum(answer.arm == "canary" for answer in sent)
        if to_canary > 12 * demo.base.sizes.min_requests:
            raise DemoFailed(f"no decision after {to_canary} canary requests: {deployment}")
        start = demo.users % len(demo.traffic)
        sent += _ask(demo, (demo.traffic[start:] + demo.traffic)[:10])
    canary = [answer for answer in sent if answer.arm == "canary"]
    right = sum(answer.text == answer.expected for answer in canary)
    say(
        f"sent {len(sent)} requests, {len(canary)} of them to the canary "
        f"({right} right); the rollout is {deployment['rollout']['status']}"
    )
    if feedback:
        _thumbs(demo, sent)
    deployment["canary_requests"] = len(canary)
    return deployment


def _shifted_cases(n: int) -> list[dict[str, Any]]:
    """Traffic unlike the training data: kings and queens take treasures. The schema allows none
    of these words, so even a faithful answer fails it."""
    from evalhub.finetune.tasks import PLACES

    rng = random.Random("shifted")
    cases = []
    for _ in range(n):
        who, item, place = rng.choice(SHIFTED_WHO), rng.choice(SHIFTED_ITEMS), rng.choice(PLACES)
        sentence = f"extract: the {who} takes the {item} to the {place}"
        cases.append({
            "messages": [{"role": "user", "content": sentence}],
            "expected": json.dumps({"who": who, "item": item, "to": place}),
        })  # fmt: skip
    return cases


# -- the steps -------------------------------------------------------------------------------


def _version_number(ref: str) -> str:
    return ref.rpartition("/")[2]


def _alias(demo: Demo, alias: str) -> str:
    model = demo.base.adapters
    found = demo.api("GET", f"/models/{model}/aliases/{alias}")
    return f"{model}/{found['version']}"


def base_and_data(demo: Demo) -> None:
    heading(2, f"{demo.base.title}; register a training and a held-out dataset")
    evalhub(*demo.base.register)
    evalhub("datasets", "add", "train.jsonl", "--name", "json-train", "--split", "train")
    evalhub("datasets", "add", "held-out.jsonl", "--name", "json-held-out", "--format", "eval",
            "--split", "test")  # fmt: skip
    first = json.loads((demo.work / "train.jsonl").read_text().splitlines()[0])
    user, assistant = first["messages"]
    say(f"the task: {user['content']!r} -> {assistant['content']}, an object the suite's JSON "
         "schema accepts (suite.yaml)")  # fmt: skip


def fine_tune(demo: Demo) -> None:
    sizes = demo.base.sizes
    heading(3, "fine-tune with the stock openai client, each checkpoint scored on the held-out "
          "suite: a quick LoRA first release, then DoRA; then a short experiment")  # fmt: skip
    lora = _fine_tune(demo, "lora", sizes.lora_steps)
    production = f"{demo.base.adapters}@production"
    evalhub("alias", "set", production, _version_number(lora["version"]), "--reason",
            "first release")  # fmt: skip
    dora = _fine_tune(demo, "dora", sizes.dora_steps)
    demo.measured["jobs"] = {"lora": lora, "dora": dora}
    method = METHODS[demo.base.sweep_method]
    say(f"two {method} trials that differ in learning rate, ranked on the suite; the winner "
         f"becomes {demo.base.adapters}@candidate")  # fmt: skip
    evalhub("experiment", "run", "sweep.yaml")
    demo.measured["winner"] = _alias(demo, "candidate")


def evaluate(demo: Demo) -> None:
    winner = demo.measured["winner"]
    heading(4, f"evaluate the base and the winner ({winner}) on the held-out suite, compare, gate, "
          "and look at the errors left")  # fmt: skip
    evalhub("backend", "local", "--base", demo.base.version, "--name", "cpu-1")
    runs = {}
    for role, model in (
        ("base", demo.base.version),
        ("winner", f"{demo.base.adapters}@candidate"),
    ):
        # --refresh: generate through the gateway again (the experiment scored both already),
        # so latency is the served one
        evalhub("eval", "run", "suite.yaml", "--model", model, "--refresh", "--output",
                f"{role}.json")  # fmt: skip
        runs[role] = json.loads((demo.work / f"{role}.json").read_text())
    evalhub("eval", "compare", runs["base"]["run_id"], runs["winner"]["run_id"])
    evalhub(
        "gate", "--suite", "suite.yaml", "--candidate", f"{demo.base.adapters}@candidate",
        "--baseline", demo.base.version, "--junit", "gate.xml", "--summary", "gate.md",
        "--output", "gate.json",
    )  # fmt: skip
    evalhub("eval", "errors", runs["winner"]["run_id"], "--clusters", "3")
    demo.measured["eval"] = {
        role: {name: metric["aggregate"]["value"] for name, metric in run["metrics"].items()}
        for role, run in runs.items()
    }
    demo.measured["gate"] = json.loads((demo.work / "gate.json").read_text())["decision"]


def _start_rollout() -> None:
    evalhub("deploy", "rollout", DEPLOYMENT, "start", "--steps", "50,100", "--candidate", "canary",
            "--control", "control", "--analysis", "@analysis.json")  # fmt: skip


def canary_promoted(demo: Demo) -> None:
    winner = demo.measured["winner"]
    heading(5, "canary the winner beside production; the rollout controller decides")
    model = demo.base.adapters
    evalhub("deploy", "create", DEPLOYMENT, "--backend", "cpu-1",
            "--arm", f"control={model}@production:100",
            "--arm", f"canary={model}@candidate:0")  # fmt: skip
    evalhub("deploy", "monitoring", DEPLOYMENT, "--sample-rate", "1",
            "--metric", "@online-metric.json")  # fmt: skip
    console.print("[dim]$[/] [bold]cat analysis.json[/]", highlight=False)
    console.print((demo.work / "analysis.json").read_text(), highlight=False)
    _start_rollout()
    say("users ask with the stock openai client; a monitor pass runs every 2 s:")
    show_python(TRAFFIC_CODE)
    deployment = _until_decided(demo, feedback=True)
    if deployment["rollout"]["status"] != "completed":
        raise DemoFailed(f"the controller did not promote {winner}: {deployment['rollout']}")
    evalhub("monitor", "decisions", DEPLOYMENT, "--limit", "3")
    evalhub("alias", "history", f"{demo.base.adapters}@production")
    evalhub("monitor", "quality", "--deployment", DEPLOYMENT)
    loaded = demo.api("GET", "/backends/cpu-1")["options"]["loaded_adapters"]
    method = METHODS[demo.base.sweep_method]
    say(f"the serve plan on cpu-1 (local, peft): {winner} ({method}) is hot-loaded as an adapter, "
         f"no merge; loaded now: {', '.join(sorted(loaded))}")  # fmt: skip
    demo.measured["promoted"] = {
        "production": _alias(demo, "production"),
        "canary_requests": deployment["canary_requests"],
        "decisions": demo.api("GET", f"/deployments/{DEPLOYMENT}/decisions")["data"],
    }


def canary_rolled_back(demo: Demo) -> None:
    heading(6, "a broken adapter (trained on scrambled answers) goes out as the next canary")
    evalhub("finetune", "run", "broken-job.yaml")
    job = demo.openai.fine_tuning.jobs.list(limit=1).data[0].to_dict()
    broken = str(job["evalhub"]["registered_version"])
    evalhub("deploy", "set-weights", DEPLOYMENT, "control=100", "canary=0")
    evalhub("alias", "set", f"{demo.base.adapters}@candidate", _version_number(broken), "--reason",
            "next try")  # fmt: skip
    _start_rollout()
    deployment = _until_decided(demo, feedback=False)
    if deployment["rollout"]["status"] != "rolled_back":
        raise DemoFailed(f"the controller did not roll back {broken}: {deployment['rollout']}")
    evalhub("monitor", "decisions", DEPLOYMENT, "--limit", "1")
    evalhub("deploy", "show", DEPLOYMENT)
    decision = demo.api("GET", f"/deployments/{DEPLOYMENT}/decisions", limit=1)["data"][0]
    demo.measured["rolled_back"] = {
        "version": broken,
        "canary_requests": deployment["canary_requests"],
        "action": decision["action"],
        "reason": decision["reason"],
    }


def drift(demo: Demo) -> None:
    from jsonschema import Draft202012Validator

    from evalhub.finetune.tasks import ORDER_SCHEMA

    n = demo.base.sizes.shifted_requests
    heading(
        7, "the traffic shifts: a drift check, an alert, and the drifted requests as eval cases"
    )
    evalhub("monitor", "alert-rule", "schema-breaks", "--metric", "metric:json_schema",
            "--deployment", DEPLOYMENT, "--arm", "control", "--below", "0.9", "--window", "900",
            "--severity", "critical")  # fmt: skip
    answers = _ask(demo, _shifted_cases(n))
    validator = Draft202012Validator(ORDER_SCHEMA)
    valid = sum(validator.is_valid(_parsed(answer.text)) for answer in answers)
    say(f"{n} requests about kings and queens; {valid} answers match the schema, e.g. "
         f"{answers[0].text!r}")  # fmt: skip
    evalhub("monitor", "drift", "--deployment", DEPLOYMENT, "--last", str(n),
            "--reference-dataset", "json-train/1")  # fmt: skip
    check = demo.api("GET", "/monitors/drift", deployment=DEPLOYMENT, limit=1)["data"][0]
    alerts = _wait_for_alert(demo)
    evalhub("monitor", "alerts", "--deployment", DEPLOYMENT)
    evalhub("monitor", "export", "--deployment", DEPLOYMENT, "--drifted", check["id"], "--as",
            "eval", "--dataset", "drifted-orders")  # fmt: skip
    exported = demo.api("GET", "/datasets/drifted-orders/versions", limit=1)["data"][0]
    demo.measured["drift"] = {
        "check": check["id"],
        "drifted": check["drifted"],
        "share_drifted": check["share_drifted"],
        "alert": alerts[0]["condition"],
        "alert_value": alerts[0]["value"],
        "exported": f"drifted-orders/{exported['version']}",
    }


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _wait_for_alert(demo: Demo, timeout: float = 60) -> list[dict[str, Any]]:
    """The server's next monitor passes score the new answers and check the alert rules."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alerts = demo.api("GET", "/alerts", deployment=DEPLOYMENT)["data"]
        if alerts:
            return list(alerts)
        time.sleep(1.0)
    raise DemoFailed(f"no alert fired within {timeout:.0f} s of the shifted traffic")
