"""The gateway for real: `evalhub serve` supervising a local backend process, the stock `openai`
client in front, deployments with A/B arms, hot swaps by alias moves, and the traffic log."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from evalhub.child_server import child_server, free_port
from evalhub.cli.registry import register_directory
from evalhub.client import Client
from tests.serving.conftest import Models

# One worker builds this module's server (a module fixture), under --dist loadgroup.
pytestmark = pytest.mark.xdist_group("serving-gateway")

MESSAGES = [{"role": "user", "content": "repeat: cat dog"}]


@dataclass
class Served:
    url: str
    token: str
    api: Client

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, timeout=60
        )


@pytest.fixture(scope="module")
def served(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with child_server(tmp_path_factory.mktemp("gateway-home")) as server:
        assert server.token, server.tail()
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            api = Client(http)
            api.post("/models", {"name": "tiny", "kind": "base"})
            register_directory(api, models.base, "tiny")
            api.post("/models", {"name": "bot", "kind": "adapter"})
            register_directory(api, models.alpha, "bot", base="tiny/1")
            register_directory(api, models.beta, "bot", base="tiny/1")
            api.put("/models/bot/aliases/production", {"version": 1})
            api.put("/models/bot/aliases/candidate", {"version": 2})
            backend = api.post("/backends", {"name": "cpu-1", "kind": "local", "base": "tiny/1"})
            assert backend["status"] == "healthy", backend
            yield Served(url=server.url, token=server.token, api=api)


def chat(client: openai.OpenAI, model: str, user: str | None = None, **kwargs):  # type: ignore[no-untyped-def]
    extra = {"user": user} if user else {}
    return client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=kwargs.pop("max_tokens", 8), temperature=0,
        **extra, **kwargs,
    )  # fmt: skip


def test_references_are_served_with_their_exact_version(served: Served) -> None:
    client = served.openai()
    answers = {}
    for model in ("tiny/1", "bot@production", "bot/1", "bot/2"):
        raw = chat(client, model)
        completion = raw.parse()
        assert completion.model == model and completion.usage.completion_tokens > 0
        answers[model] = completion.choices[0].message.content
        version = raw.headers["x-evalhub-model-version"]
        assert version == {"bot@production": "bot/1"}.get(model, model)
        assert raw.headers["x-evalhub-request-id"].startswith("req-")
    assert answers["bot@production"] == answers["bot/1"]
    assert len({answers["tiny/1"], answers["bot/1"], answers["bot/2"]}) == 3

    # The same request straight to the backend, by the adapter name the gateway loaded.
    backend = served.api.get("/backends/cpu-1")
    loaded = [n for n in backend["options"]["loaded_adapters"] if n.startswith("bot-v1-")]
    direct = openai.OpenAI(base_url=backend["urls"][0], api_key="x").chat.completions.create(
        model=loaded[0], messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert direct.choices[0].message.content == answers["bot/1"]

    stream = client.chat.completions.create(
        model="bot/2", messages=MESSAGES, max_tokens=8, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answers["bot/2"]
    )
    listed = {m.id for m in client.models.list()}
    assert {"bot@production", "bot@candidate"} <= listed


def test_errors_in_openai_format(served: Served) -> None:
    client = served.openai()
    with pytest.raises(openai.NotFoundError) as missing:
        chat(client, "ghost@production")
    assert "ghost@production" in str(missing.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="ehk_wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="bot/1", messages=MESSAGES, n=3)


def test_ab_split_is_weighted_and_sticky(served: Served) -> None:
    served.api.post(
        "/deployments",
        {
            "name": "split",
            "backend": "cpu-1",
            "arms": [
                {"name": "control", "model": "bot@production", "weight": 80},
                {"name": "candidate", "model": "bot@candidate", "weight": 20},
            ],
        },
    )
    client = served.openai()

    def arm_of(user: str) -> str:
        return chat(client, "split", user=user, max_tokens=1).headers["x-evalhub-arm"]

    n = 2000
    with ThreadPoolExecutor(max_workers=8) as pool:
        arms = list(pool.map(arm_of, (f"user-{i}" for i in range(n))))
    candidates = Counter(arms)["candidate"]
    # 99.9% binomial interval for p = 0.2: n p ± 3.29 sqrt(n p (1 - p)).
    half_width = 3.29 * math.sqrt(n * 0.2 * 0.8)
    assert abs(candidates - n * 0.2) <= half_width, candidates
    for user in ("user-1", "user-2", "user-3", "user-7"):
        assert {arm_of(user) for _ in range(3)} == {arms[int(user.split("-")[1])]}

    # Every request is in the traffic log with its arm and exact version.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = list(served.api.paged("/traffic", deployment="split", limit=1000))
        if len(records) >= n + 12:
            break
        time.sleep(0.3)
    assert len(records) == n + 12
    by_arm = Counter((r["arm"], r["version"], r["status"]) for r in records)
    assert (
        by_arm[("candidate", "bot/2", 200)]
        == candidates
        + sum(
            1
            for u in ("user-1", "user-2", "user-3", "user-7")
            if arms[int(u.split("-")[1])] == "candidate"
        )
        * 3
    )
    assert sum(by_arm.values()) == n + 12
    assert all(r["latency_ms"] > 0 and r["completion_tokens"] == 1 for r in records)
    metrics = httpx.get(f"{served.url}/metrics").text
    assert (
        'evalhub_gateway_requests_total{arm="candidate",deployment="split",status="200"}' in metrics
    )


def test_moving_an_alias_swaps_under_load_without_failures(served: Served) -> None:
    served.api.put("/models/bot/aliases/live", {"version": 1})
    served.api.post(
        "/deployments",
        {
            "name": "swap",
            "backend": "cpu-1",
            "arms": [{"name": "main", "model": "bot@live", "weight": 100}],
        },
    )
    client = served.openai()
    versions: list[str] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                versions.append(
                    chat(client, "swap", max_tokens=2).headers["x-evalhub-model-version"]
                )
            except Exception as error:  # any failure is what this test looks for
                failures.append(error)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)
    served.api.put("/models/bot/aliases/live", {"version": 2, "reason": "swap under load"})
    time.sleep(3)
    stop.set()
    for worker in workers:
        worker.join(30)
    assert failures == []
    assert versions[0] == "bot/1" and versions[-1] == "bot/2"
    assert set(versions) == {"bot/1", "bot/2"}
    # Once bot/2 answers, bot/1 never answers again.
    first_new = versions.index("bot/2")
    assert "bot/1" not in versions[first_new + 8 :]


def test_rollout_steps_and_rollback(served: Served) -> None:
    served.api.post(
        "/deployments",
        {
            "name": "roll",
            "backend": "cpu-1",
            "arms": [
                {"name": "control", "model": "bot@production", "weight": 100},
                {"name": "candidate", "model": "bot@candidate", "weight": 0},
            ],
        },
    )

    def weights(deployment: dict) -> dict[str, float]:
        return {arm["name"]: arm["weight"] for arm in deployment["arms"]}

    started = served.api.post(
        "/deployments/roll/rollout", {"action": "start", "steps": [10, 50, 100]}
    )
    assert weights(started) == {"control": 90, "candidate": 10}
    stepped = served.api.post("/deployments/roll/rollout", {"action": "step"})
    assert weights(stepped) == {"control": 50, "candidate": 50}
    served.api.post("/deployments/roll/rollout", {"action": "pause"})
    with pytest.raises(Exception, match="paused"):
        served.api.post("/deployments/roll/rollout", {"action": "step"})
    aborted = served.api.post("/deployments/roll/rollout", {"action": "abort"})
    assert weights(aborted) == {"control": 100, "candidate": 0}
    assert aborted["rollout"]["status"] == "aborted"
    resumed = served.api.post("/deployments/roll/rollout", {"action": "start", "steps": [100]})
    assert weights(resumed) == {"control": 0, "candidate": 100}
    assert resumed["rollout"]["status"] == "completed"
    rolled_back = served.api.post("/deployments/roll/rollback")  # even after completion
    assert weights(rolled_back) == {"control": 100, "candidate": 0}
    assert rolled_back["rollout"]["status"] == "rolled_back"
    undone = served.api.post("/deployments/roll/rollback")  # no rollout: undo the last change
    assert weights(undone) == {"control": 0, "candidate": 100}
    with pytest.raises(Exception, match="sum to 100"):
        served.api.patch(
            "/deployments/roll",
            {"arms": [{"name": "control", "model": "bot@production", "weight": 70}]},
        )
    audit = served.api.get("/audit", resource="deployments/roll")["data"]
    assert [a["action"] for a in audit][:4] == [
        "deployment.rollback",
        "deployment.rollback",
        "deployment.rollout.start",
        "deployment.rollout.abort",
    ]


def test_replicas_all_load_adapters_and_survive_a_crash(served: Served) -> None:
    import signal

    backend = served.api.post(
        "/backends", {"name": "pair", "kind": "local", "base": "tiny/1", "replicas": 2}
    )
    assert backend["status"] == "healthy" and len(backend["urls"]) == 2
    served.api.post(
        "/deployments",
        {
            "name": "paired",
            "backend": "pair",
            "arms": [{"name": "main", "model": "bot/2", "weight": 100}],
        },
    )
    client = served.openai()
    expected = chat(client, "paired").parse().choices[0].message.content
    for url in backend["urls"]:  # the load went to every replica
        names = {m.id for m in openai.OpenAI(base_url=url, api_key="x").models.list()}
        assert any(name.startswith("bot-v2-") for name in names), (url, names)

    os.kill(backend["pids"][0], signal.SIGKILL)  # one replica dies
    answers = [chat(client, "paired").parse().choices[0].message.content for _ in range(6)]
    assert answers == [expected] * 6  # served by the other replica meanwhile

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the supervisor restarts it
        status = served.api.get("/backends/pair")
        if status["restarts"] >= 1 and status["status"] == "healthy":
            break
        time.sleep(0.5)
    assert status["restarts"] >= 1 and status["status"] == "healthy", status
    # The restarted replica lost its adapters; the gateway reloads them and nothing fails.
    answers = [chat(client, "paired").parse().choices[0].message.content for _ in range(6)]
    assert answers == [expected] * 6


def test_arms_of_one_deployment_run_on_their_own_backends(served: Served) -> None:
    from evalhub.client import ApiError

    served.api.post("/backends", {"name": "cpu-2", "kind": "local", "base": "tiny/1"})
    arms = [
        {"name": "control", "model": "bot/1", "weight": 50},
        {"name": "candidate", "model": "bot/2", "weight": 50, "backend": "cpu-2"},
    ]
    body = {"name": "spread", "backend": "cpu-1", "sticky": "none", "arms": arms}
    with pytest.raises(ApiError) as refused:  # an arm on a backend that does not exist
        served.api.post("/deployments", {**body, "arms": [arms[0], {**arms[1], "backend": "x"}]})
    assert refused.value.status == 404 and "arm 'candidate': backend 'x'" in refused.value.message
    assert all(d["name"] != "spread" for d in served.api.get("/deployments"))

    served.api.post("/deployments", body)
    client = served.openai()
    expected = {v: chat(client, v).parse().choices[0].message.content for v in ("bot/1", "bot/2")}
    seen = set()
    for _ in range(16):
        raw = chat(client, "spread")
        version, backend = raw.headers["x-evalhub-model-version"], raw.headers["x-evalhub-backend"]
        assert (version, backend) in {("bot/1", "cpu-1"), ("bot/2", "cpu-2")}
        assert raw.parse().choices[0].message.content == expected[version]
        seen.add(backend)
    assert seen == {"cpu-1", "cpu-2"}
    loaded = served.api.get("/backends/cpu-2")["options"]["loaded_adapters"]
    assert any(name.startswith("bot-v2-") for name in loaded)

    with pytest.raises(ApiError) as in_use:  # the candidate's backend serves the deployment
        served.api.delete("/backends/cpu-2")
    assert in_use.value.status == 409 and "spread" in in_use.value.message
    served.api.delete("/deployments/spread")
    served.api.delete("/backends/cpu-2")


def test_unavailable_backends_answer_503_and_failover_uses_control(
    served: Served, models: Models, tmp_path: Path
) -> None:
    # A server we start and then stop, attached as a backend.
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "evalhub.serving.local.server", "--model", str(models.base),
            "--served-model-name", "tiny/1", "--port", str(port), "--log-level", "warning",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        from evalhub.serving.supervisor import wait_healthy

        wait_healthy(f"http://127.0.0.1:{port}/v1", 60, None)
        served.api.post(
            "/backends",
            {"name": "fragile", "kind": "local", "base": "tiny/1", "managed": False,
             "url": f"http://127.0.0.1:{port}"},
        )  # fmt: skip
        served.api.post(
            "/deployments",
            {"name": "fragile-bot", "backend": "fragile",
             "arms": [{"name": "only", "model": "bot/1", "weight": 100}]},
        )  # fmt: skip
        client = served.openai()
        assert chat(client, "fragile-bot").parse().choices[0].message.content
    finally:
        server.terminate()
        server.wait(30)
    with pytest.raises(openai.InternalServerError) as down:
        chat(client, "fragile-bot")
    assert down.value.status_code == 503 and "unavailable" in str(down.value)

    # A candidate that resolves to nothing fails over to the control arm when asked to.
    served.api.put("/models/bot/aliases/doomed", {"version": 2})
    served.api.post(
        "/deployments",
        {"name": "guarded", "backend": "cpu-1", "failover": True,
         "arms": [{"name": "control", "model": "bot/1", "weight": 0},
                  {"name": "candidate", "model": "bot@doomed", "weight": 100}]},
    )  # fmt: skip
    assert chat(client, "guarded").headers["x-evalhub-arm"] == "candidate"
    served.api.delete("/models/bot/aliases/doomed")
    # The gateway forgets cached routes on the change: the very next request fails over.
    raw = chat(client, "guarded")
    assert raw.headers["x-evalhub-arm"] == "control"
    assert raw.headers["x-evalhub-model-version"] == "bot/1"


def test_a_registry_reference_is_evaluated_through_the_servers_own_gateway(
    served: Served,
) -> None:
    client = served.openai()
    prompts = [f"repeat: {word}" for word in ("cat", "dog", "sun", "sea")]
    answers = {
        model: [
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], max_tokens=6,
                temperature=0, seed=0,
            ).choices[0].message.content
            for p in prompts
        ]
        for model in ("bot/1", "bot/2")
    }  # fmt: skip
    assert answers["bot/1"] != answers["bot/2"]
    # The expected answers are bot/2's own: a full score proves the run reached bot/2.
    dataset = "\n".join(
        json.dumps({"id": f"case-{i}", "input": p, "expected": a})
        for i, (p, a) in enumerate(zip(prompts, answers["bot/2"], strict=True))
    )
    suite = (
        "name: echo\nversion: '1'\ndataset: cases.jsonl\n"
        "sampling: {temperature: 0, max_tokens: 6, seed: 0}\n"
        "metrics:\n  - name: exact_match\n"
    )
    started = served.api.post(
        "/evals",
        {"suite": suite, "filename": "echo.yaml", "dataset": dataset,
         "target": {"model": "bot@candidate"}},
    )  # fmt: skip
    run_id = started["run"]["id"]
    deadline = time.monotonic() + 120
    while (info := served.api.get(f"/evals/{run_id}"))["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, info
        time.sleep(0.3)
    assert info["status"] == "completed", info
    assert info["model_version"] == "bot/2"
    run = served.api.get(f"/evals/{run_id}/run")
    assert run["metrics"]["exact_match"]["aggregate"]["value"] == 1.0, run["metrics"]

    # Its four generations went through the gateway, and are in its traffic log as such.
    def during_run() -> list[dict]:
        return [
            r for r in served.api.paged("/traffic", limit=1000)
            if run["started_at"] <= r["created_at"] <= run["finished_at"]
        ]  # fmt: skip

    deadline = time.monotonic() + 10
    while len(records := during_run()) < 4:
        assert time.monotonic() < deadline, records
        time.sleep(0.2)
    assert [(r["model"], r["version"], r["status"]) for r in records] == [
        ("bot/2", "bot/2", 200)
    ] * 4


def test_moving_an_alias_loads_the_new_version_before_traffic_asks(
    served: Served, models: Models
) -> None:
    served.api.post("/models", {"name": "warmed", "kind": "adapter"})
    register_directory(served.api, models.alpha, "warmed", base="tiny/1")
    register_directory(served.api, models.outside, "warmed", base="tiny/1")
    served.api.put("/models/warmed/aliases/live", {"version": 1})
    served.api.post(
        "/deployments",
        {"name": "warmed-bot", "backend": "cpu-1",
         "arms": [{"name": "main", "model": "warmed@live", "weight": 100}]},
    )  # fmt: skip

    def loaded() -> list[str]:
        options = served.api.get("/backends/cpu-1")["options"]
        return [name for name in options["loaded_adapters"] if name.startswith("warmed-")]

    deadline = time.monotonic() + 30  # creating the deployment warms its arms up too
    while not any(name.startswith("warmed-v1-") for name in loaded()):
        assert time.monotonic() < deadline, loaded()
        time.sleep(0.2)
    assert chat(served.openai(), "warmed-bot").headers["x-evalhub-model-version"] == "warmed/1"
    assert not any(name.startswith("warmed-v2-") for name in loaded())

    # No request asks for warmed/2: the move alone loads it into the backend.
    served.api.put("/models/warmed/aliases/live", {"version": 2, "reason": "warm it"})
    deadline = time.monotonic() + 30
    while not any(name.startswith("warmed-v2-") for name in loaded()):
        assert time.monotonic() < deadline, loaded()
        time.sleep(0.2)
    assert chat(served.openai(), "warmed-bot").headers["x-evalhub-model-version"] == "warmed/2"
