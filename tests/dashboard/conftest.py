"""One real `evalhub serve` seeded through its API with the whole loop, for the dashboard's tests.

What the pages show comes from here: a tiny base and three really fine-tuned or random adapters
served by a real local backend; a fine-tuning job that really trained; two eval runs of the same
suite (exact match, JSON validity, and an LLM judge that is a scripted server, named so because
no judge model runs here); a deployment with traffic through the gateway and feedback; a canary
under analysis that the controller rolled back; a drift check; an alert; annotation queues
of an eval run (with two raters' labels) and of the traffic; a two-trial experiment scored on a
held-out suite. Built once per test process (session scope).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from evalhub.child_server import child_server
from evalhub.cli.registry import register_directory
from evalhub.client import Client
from evalhub.finetune.tasks import as_eval_cases, json_task, upper_case_task, write_jsonl
from tests.monitoring.conftest import Models, models  # noqa: F401  (the fixture, built once)
from tests.scripted_server import ScriptedServer, scripted

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
EVAL_CASES = 12
QUEUE = "json-quality"

SUITE = """\
name: json-words
version: 1
description: Turn a list of words into a JSON object of them.
dataset: json-words.jsonl
prompt:
  - role: user
    content: "{input}"
sampling: {temperature: 0, max_tokens: 48, seed: 0}
metrics:
  - name: exact_match
  - name: json_valid
  - name: llm_judge
    options: {base_url: "JUDGE_URL", model: scripted-judge}
slices:
  - {name: short, tags: [short]}
  - {name: long, tags: [long]}
"""


EXPERIMENT_SUITE = """\
name: upper
version: 1
dataset: upper-held-out
sampling: {temperature: 0, max_tokens: 24, seed: 0}
metrics:
  - name: exact_match
  - name: chrf
"""


@dataclass
class Seeded:
    url: str
    admin: str
    editor: str
    viewer: str
    job_id: str
    experiment_id: str
    baseline_run: str
    candidate_run: str
    drift_check: str
    alert_id: int
    requests: dict[str, int]  # the deployment `chat`'s requests per arm


def judge(body: dict[str, Any]) -> str:
    """A scripted judge (no judge model can run here): 5 for an answer that is the reference's
    JSON, 2 for other JSON, 1 for anything else."""
    prompt = body["messages"][-1]["content"]
    reference = re.search(r"Reference answer:\n(.*)\n\nResponse to grade:", prompt, re.S)
    answer = prompt.split("Response to grade:\n", 1)[1].split("\n\nGrade the response", 1)[0]
    try:
        json.loads(answer)
    except ValueError:
        return "Not JSON.\nSCORE: 1"
    if reference and answer.strip() == reference.group(1).strip():
        return "Matches the reference.\nSCORE: 5"
    return "JSON, but not the reference's words.\nSCORE: 2"


def eval_dataset() -> str:
    rows = json_task(EVAL_CASES, seed=11, split="held_out")
    lines = []
    for index, row in enumerate(rows):
        prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        tag = "short" if len(prompt.split()) <= 3 else "long"
        case = {"id": f"case-{index:02d}", "input": prompt, "expected": answer, "tags": [tag]}
        lines.append(json.dumps(case))
    return "\n".join(lines) + "\n"


def wait_for(read: Any, done: Any, what: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not done after {timeout} s: {value}")
        time.sleep(0.5)


def chat(
    http: httpx.Client, deployment: str, prompts: list[str], start: int
) -> list[httpx.Response]:
    replies = []
    for i, prompt in enumerate(prompts, start):
        body = {
            "model": deployment,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 48,
            "temperature": 0,
            "user": f"user-{i}",
        }
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        replies.append(reply)
    return replies


# The test modules that use `seeded` share the xdist group "dashboard", so under `--dist
# loadgroup` one worker runs them all and the seeded server is built once. (pytest 9.2 lost
# xdist 3.8's group suffix; tests/conftest.py's pytest_collection_modifyitems puts it back.)
@pytest.fixture(scope="session")
def seeded(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:  # noqa: F811
    home = tmp_path_factory.mktemp("dashboard-home")
    settings = {"EVALHUB_MONITOR_INTERVAL": "0"}
    with scripted(ScriptedServer(judge)) as judge_server, child_server(home, settings) as server:
        assert server.token, server.tail()
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=300) as http:
            yield _seed(Client(http), http, server.url, server.token, judge_server, home, models)


def _seed(
    api: Client,
    http: httpx.Client,
    url: str,
    admin: str,
    judge_server: ScriptedServer,
    home: Path,
    built: Models,
) -> Seeded:
    tokens = {
        role: api.post("/tokens", {"name": f"dash-{role}", "role": role})["token"]
        for role in ("viewer", "editor")
    }

    # Registry: a base, three adapters, production and candidate aliases with history.
    api.post("/models", {"name": "tiny", "kind": "base"})
    register_directory(api, built.base, "tiny")
    api.post("/models", {"name": "bot", "kind": "adapter", "description": "JSON answers"})
    for adapter in (built.json_a, built.broken, built.json_b):
        register_directory(api, adapter, "bot", base="tiny/1")
    api.put("/models/bot/aliases/production", {"version": 1})
    api.put("/models/bot/aliases/candidate", {"version": 2})
    api.put("/models/bot/aliases/candidate", {"version": 3})
    backend = api.post("/backends", {"name": "cpu", "kind": "local", "base": "tiny/1"})
    assert backend["status"] == "healthy", backend

    # A registered dataset, and a fine-tuning job on it that really trains.
    train = write_jsonl(home / "json-train.jsonl", json_task(64, seed=3))
    with train.open("rb") as handle:
        http.post(
            "/api/v1/datasets/json-train/versions",
            files={"file": ("json-train.jsonl", handle)},
            data={"format": "chat", "create": "true"},
        ).raise_for_status()
    with train.open("rb") as handle:
        upload = http.post(
            "/v1/files", files={"file": ("json-train.jsonl", handle)}, data={"purpose": "fine-tune"}
        )
    upload.raise_for_status()
    job = http.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "tiny",
            "training_file": upload.json()["id"],
            "validation_file": upload.json()["id"],
            "suffix": "dash",
            "seed": 0,
            "evalhub": {"method": "lora", "max_steps": 12, "eval_every": 4, "checkpoint_every": 6},
        },
    )
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]

    # An experiment of two trials that upper-case words, scored on held-out cases.
    for name, rows, kind in (
        ("upper-train", upper_case_task(200, seed=0), "chat"),
        (
            "upper-held-out",
            as_eval_cases(upper_case_task(EVAL_CASES, seed=0, split="held_out")),
            "eval",
        ),
    ):
        content = "".join(json.dumps(row) + "\n" for row in rows).encode()
        http.post(
            f"/api/v1/datasets/{name}/versions",
            files={"file": (f"{name}.jsonl", content)},
            data={"format": kind, "create": "true"},
        ).raise_for_status()
    experiment = api.post(
        "/experiments",
        {
            "name": "dash-sweep",
            "base": "tiny",
            "dataset": "upper-train",
            "suite": EXPERIMENT_SUITE,
            "metric": "exact_match",
            "space": {"learning_rate": [0.0002, 0.006]},
            "fixed": {"max_steps": 80, "batch_size": 16},
            "eval_every": 40,
        },
    )

    # Two eval runs of the same suite through the server's gateway, judged by the scripted judge.
    suite = SUITE.replace("JUDGE_URL", judge_server.base_url)
    runs = {}
    for name, version in (("baseline", "bot/1"), ("candidate", "bot/3")):
        started = api.post(
            "/evals",
            {
                "suite": suite,
                "filename": "json-words.yaml",
                "dataset": eval_dataset(),
                "target": {"model": version},
            },
        )
        runs[name] = started["run"]["id"]
    for run in runs.values():
        info = wait_for(lambda r=run: api.get(f"/evals/{r}"), _finished, f"eval {run}")
        assert info["status"] == "completed", info
    finished = wait_for(
        lambda: http.get(f"/v1/fine_tuning/jobs/{job_id}").json(),
        lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
        f"fine-tuning job {job_id}",
    )
    assert finished["status"] == "succeeded", finished
    swept = wait_for(
        lambda: api.get(f"/experiments/{experiment['id']}"),
        lambda e: e["status"] in ("succeeded", "failed", "cancelled"),
        f"experiment {experiment['id']}",
    )
    assert swept["status"] == "succeeded", swept

    # Human evaluation: the candidate run's answers on a 1-5 scale, half of them labelled by two
    # raters (one agrees with the judge, one is harsher on two), and a sample of traffic.
    rater = api.post("/tokens", {"name": "dash-rater", "role": "editor"})["token"]
    api.post(
        "/annotations/queues",
        {"name": QUEUE, "kind": "scale", "eval_run": runs["candidate"], "question": "How good?"},
    )
    items = api.get(f"/annotations/queues/{QUEUE}/items", limit=EVAL_CASES // 2)["data"]
    for token, harsh in ((tokens["editor"], 0), (rater, 2)):
        for i, item in enumerate(items):
            agrees = 1 + round(4 * item["judges"]["llm_judge"])
            value = (agrees - 2 if agrees > 2 else agrees + 2) if i < harsh else agrees
            http.put(
                f"/api/v1/annotations/queues/{QUEUE}/items/{item['id']}/label",
                json={"value": value},
                headers={"Authorization": f"Bearer {token}"},
            ).raise_for_status()

    # A deployment with traffic on two arms and feedback on some answers.
    api.post(
        "/deployments",
        {
            "name": "chat",
            "backend": "cpu",
            "arms": [
                {"name": "control", "model": "bot@production", "weight": 50},
                {"name": "candidate", "model": "bot@candidate", "weight": 50},
            ],
        },
    )
    prompts = [r["messages"][0]["content"] for r in json_task(40, seed=5, split="held_out")]
    replies = chat(http, "chat", prompts, 0)
    requests: dict[str, int] = {}
    for i, reply in enumerate(replies):
        arm = reply.headers["x-evalhub-arm"]
        requests[arm] = requests.get(arm, 0) + 1
        if i % 4 == 0:
            request_id = reply.headers["x-evalhub-request-id"]
            api.post("/feedback", {"request_id": request_id, "score": float(i % 8 == 0)})

    # A canary of the broken adapter under analysis: the controller rolls it back.
    api.post(
        "/deployments",
        {
            "name": "canary",
            "backend": "cpu",
            "arms": [
                {"name": "control", "model": "bot@production", "weight": 100},
                {"name": "canary", "model": "bot/2", "weight": 0},
            ],
        },
    )
    api.post(
        "/deployments/canary/rollout",
        {
            "action": "start",
            "steps": [50, 100],
            "analysis": {
                "guards": [{"name": "json_valid", "margin": 0.1}],
                "min_requests": 10,
                "max_wait_seconds": 600,
            },
        },
    )
    sent = 0
    while api.get("/deployments/canary")["rollout"]["status"] == "running":
        chat(http, "canary", prompts[:20], 100 + sent)
        sent += 20
        assert sent <= 200, api.get("/deployments/canary/decisions")
        api.post("/monitors/run", {"deployment": "canary"})

    # An alert rule that fires on the next pass, a drift check of the chat traffic.
    api.post(
        "/alerts/rules",
        {
            "name": "busy-chat",
            "metric": "requests",
            "deployment": "chat",
            "window_seconds": 3600,
            "comparison": ">",
            "threshold": 10,
            "severity": "warning",
        },
    )
    api.post("/monitors/run", {"deployment": "chat"})
    alert = api.get("/alerts", deployment="chat")["data"][0]
    api.post(
        "/annotations/queues",
        {
            "name": "chat-sample",
            "kind": "labels",
            "labels": ["bad", "good"],
            "deployment": "chat",
            "sample": 10,
        },
    )
    drift = api.post(
        "/monitors/drift",
        {
            "deployment": "chat",
            "reference": {"first": 20},
            "current": {"last": 20},
            "embeddings": False,
        },
    )

    return Seeded(
        url=url,
        admin=admin,
        editor=tokens["editor"],
        viewer=tokens["viewer"],
        job_id=job_id,
        experiment_id=experiment["id"],
        baseline_run=runs["baseline"],
        candidate_run=runs["candidate"],
        drift_check=drift["id"],
        alert_id=int(alert["id"]),
        requests=requests,
    )


def _finished(info: dict[str, Any]) -> bool:
    return info["status"] in ("completed", "failed")


def app_test(seeded: Seeded, page: str, token: str | None, timeout: float = 60) -> AppTest:
    """An AppTest of one dashboard page (e.g. "views/registry.py") signed in with `token`."""
    os.environ["EVALHUB_URL"] = seeded.url
    if token is None:
        os.environ.pop("EVALHUB_TOKEN", None)
    else:
        os.environ["EVALHUB_TOKEN"] = token
    return AppTest.from_file(str(DASHBOARD / page), default_timeout=timeout)
