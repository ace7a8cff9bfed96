"""Monitoring benchmark: drift checks over 10,000 and 100,000 traffic records (time by phase, peak
memory, growth), the per-record cost of online scoring and of prompt embeddings, and the
gateway's added p50 with monitoring on (sample rate 0.2, scheduled passes every second) and off.

Each drift size runs in a fresh process on its own SQLite home, so its peak RSS (getrusage) is its
own: numpy, torch and the row objects included, which tracemalloc would miss. The machine's 2
cores are shared, so timings are the best of `--repeats` unless a row says otherwise; the cold
drift check (which embeds and stores the samples) can only run once per home. The phases are
the service's own pieces (some private: `DriftService._rows` and `._embeddings`,
`drift._sample_first`) timed one at a time; what the end-to-end time leaves over is the storing.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/monitor.py [--sizes 10000 100000] [--requests 2000]
Prints a table per part and writes bench/results/monitor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Run as a script, this file's folder comes first on sys.path and bench/registry.py would hide
# the `registry` package; drop that folder (evalhub is imported inside the functions, after this).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEPLOYMENT = "bench"
ARMS = [{"name": "main", "model": "bot/1", "weight": 100}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
PETS = ["cat", "dog", "parrot", "hamster", "rabbit", "goldfish", "turtle", "puppy", "kitten"]
NEEDS = ["food", "toys", "a bed", "a walk", "a vet", "water", "a brush", "treats"]
FINANCE = ["bond yields", "inflation", "interest rates", "equity markets", "the central bank",
           "currency swaps", "credit spreads", "pension funds", "quarterly earnings"]  # fmt: skip
NAMES = ["Bella", "Max", "Luna", "Charlie", "Milo", "Coco", "Rocky", "Daisy", "Oscar", "Ruby"]
INSERT_CHUNK = 5_000
TARGET_SECONDS, TARGET_GB, TARGET_P50_RATIO = 60.0, 4.0, 1.10


# -- traffic ------------------------------------------------------------------------------------


def prompt(rng: random.Random, shifted: bool) -> str:
    """A pet question (the reference's topic) or a finance brief; each one distinct, so the
    embeddings are computed for every sampled record rather than read back from a cache."""
    if shifted:
        topics = ", ".join(rng.sample(FINANCE, 5))
        return (
            f"Write a detailed analysis of how {topics} interact over the next decade, with "
            f"scenarios, risks and a recommendation for a portfolio of {rng.randint(3, 9)} assets "
            f"(client {rng.randrange(10**6)})."
        )
    return (
        f"what does my {rng.randint(1, 15)}-year-old {rng.choice(PETS)} {rng.choice(NAMES)} "
        f"need, {rng.choice(NEEDS)} or {rng.choice(NEEDS)}? (order {rng.randrange(10**6)})"
    )


def traffic(n: int, seed: int, *, current: bool, start: Any, step: timedelta) -> Iterator[dict]:
    """Rows for `insert(TrafficRow.__table__)`. The current window drifts a little from the
    reference: 15% of its prompts are on another topic (and longer), answers run a few words
    longer, latency is 5% higher; 10% of answers are JSON, 2% of requests fail."""
    rng = random.Random(seed)
    for i in range(n):
        shifted = current and rng.random() < 0.15
        text = prompt(rng, shifted)
        words = rng.randint(40, 80) if shifted else rng.randint(3, 12 if current else 10)
        failed = rng.random() < 0.02
        if failed:
            response = None
        elif rng.random() < 0.1:
            response = json.dumps({"a": i} if rng.random() < 0.8 else {"b": "x"})
        else:
            response = " ".join(rng.choice(NEEDS) for _ in range(words))
        yield {
            "id": f"req-{seed}-{i}",
            "created_at": start + step * i,
            "deployment": DEPLOYMENT,
            "arm": "main",
            "model": DEPLOYMENT,
            "version": "bot/1",
            "digest": None,
            "user": f"user-{rng.randrange(500)}",
            "endpoint": "chat.completions",
            "request": {"model": DEPLOYMENT, "messages": [{"role": "user", "content": text}]},
            "response_text": response,
            "status": 500 if failed else 200,
            "error": "upstream failed" if failed else None,
            "stream": False,
            "latency_ms": max(1.0, rng.gauss(105 if current else 100, 10)),
            "ttft_ms": None,
            "prompt_tokens": len(text) // 4,
            "completion_tokens": 0 if failed else words * 2,
            "cost": None,
        }


def open_platform(home: Path) -> Any:
    from evalhub.platform import Platform
    from evalhub.settings import Settings

    return Platform.open(Settings(home=home, _env_file=None))


def populate(
    platform: Any, windows: list[tuple[int, int, bool, Any, timedelta]], deployment: bool = True
) -> None:
    from sqlalchemy import insert
    from sqlmodel import Session

    from evalhub.serving.tables import DeploymentRow, TrafficRow

    if deployment:
        with Session(platform.engine) as session:
            session.add(DeploymentRow(name=DEPLOYMENT, backend="cpu", arms=ARMS))
            session.commit()
    for n, seed, current, start, step in windows:
        rows = traffic(n, seed, current=current, start=start, step=step)
        while chunk := [row for _, row in zip(range(INSERT_CHUNK), rows, strict=False)]:
            with Session(platform.engine) as session:
                session.execute(insert(TrafficRow.__table__), chunk)
                session.commit()


# -- measuring ----------------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def best_of(repeats: int, function: Callable[[], Any], before: Callable[[], Any] | None = None):
    """The fastest of `repeats` runs (`before` resets state between them, untimed)."""
    best, value = float("inf"), None
    for _ in range(repeats):
        if before is not None:
            before()
        seconds, value = timed(function)
        best = min(best, seconds)
    return best, value


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(part: str, home: Path, n: int, repeats: int) -> dict[str, Any]:
    result = home / f"{part}-{n}.json"
    command = [sys.executable, __file__, "--child", part, "--home", str(home), "--n", str(n)]
    subprocess.run([*command, "--repeats", str(repeats), "--result", str(result)], check=True)
    return json.loads(result.read_text())


# -- part 1: drift checks -----------------------------------------------------------------------


def child_populate(home: Path, n: int) -> dict[str, Any]:
    from registry.tables import utcnow

    step = timedelta(milliseconds=10)
    start = utcnow() - step * (2 * n + 1)
    seconds, _ = timed(
        lambda: populate(
            open_platform(home),
            [(n, 1, False, start, step), (n, 2, True, start + step * n, step)],
        )
    )
    return {"rows": 2 * n, "insert_s": seconds, "peak_rss_mb": peak_rss_mb()}


def warm_up() -> None:
    """Imports, the MiniLM load and Evidently's first call are start-up, not a check's cost."""
    import pandas as pd

    from evalhub.eval.metrics.semantic_similarity import default_model_path, load_model
    from evalhub.monitoring.frames import TRAFFIC_COLUMNS
    from monitors.drift import drift_check, drift_report_html

    load_model(default_model_path())
    rng = random.Random(9)
    frames = [
        pd.DataFrame(
            [
                {
                    "prompt": prompt(rng, False),
                    "response": "x " * rng.randint(1, 9),
                    "latency_ms": rng.gauss(100, 10),
                    "prompt_tokens": rng.randint(5, 50),
                    "completion_tokens": rng.randint(5, 50),
                    "arm": "main",
                    "version": "bot/1",
                }
                for _ in range(200)
            ],
            columns=TRAFFIC_COLUMNS,
        )
        for _ in range(2)
    ]
    drift_check(*frames)
    drift_report_html(*frames)


def child_drift(home: Path, n: int, repeats: int) -> dict[str, Any]:
    from evalhub.monitoring import drift as service_module
    from evalhub.monitoring.drift import DriftCheckCreate, DriftService, Window
    from evalhub.monitoring.frames import traffic_frame
    from monitors.descriptors import text_descriptors
    from monitors.drift import drift_check, drift_report_html

    platform = open_platform(home)
    warm_up()
    baseline_mb = rss_mb()
    service = DriftService(platform)
    sample = 2000
    body = DriftCheckCreate(
        deployment=DEPLOYMENT,
        current=Window(last=n),
        reference=Window(first=n),
        embeddings=True,
        embedding_sample=sample,
    )
    cold_s, cold = timed(lambda: service.run(body, actor="bench"))
    cold_peak_mb = peak_rss_mb()
    warm_s, warm = best_of(repeats, lambda: service.run(body, actor="bench"))
    peak_mb = peak_rss_mb()

    # The same pieces the service runs, one at a time (the best of `repeats` each).
    phases: dict[str, float] = {}
    phases["load_rows"], loaded = best_of(
        repeats,
        lambda: (
            service._rows(DEPLOYMENT, None, body.reference),
            service._rows(DEPLOYMENT, None, body.current),
        ),
    )
    phases["frames"], (reference, current) = best_of(
        repeats, lambda: (traffic_frame(loaded[0]), traffic_frame(loaded[1]))
    )
    loaded = None  # the row objects are what a check holds most of; gone before the rest
    phases["sample_order"], (reference, current) = best_of(
        repeats,
        lambda: (
            service_module._sample_first(reference, sample),
            service_module._sample_first(current, sample),
        ),
    )
    phases["descriptors"], _ = best_of(
        repeats,
        lambda: [
            text_descriptors(frame[column], prefix=column)
            for frame in (reference, current)
            for column in ("prompt", "response")
        ],
    )
    columns_s, result = best_of(repeats, lambda: drift_check(reference, current))
    phases["column_tests"] = columns_s - phases["descriptors"]
    phases["embeddings_read"], vectors = best_of(
        repeats,
        lambda: (
            service._embeddings(reference.iloc[:sample], cached=True),
            service._embeddings(current.iloc[:sample], cached=True),
        ),
    )
    both = {"reference_embeddings": vectors[0], "current_embeddings": vectors[1]}
    with_embeddings_s, _ = best_of(repeats, lambda: drift_check(reference, current, **both))
    phases["embedding_classifier"] = with_embeddings_s - columns_s
    phases["html_report"], html = best_of(repeats, lambda: drift_report_html(reference, current))
    phases["storing_and_rest"] = warm_s - sum(phases.values())
    # What one window's row objects hold: Python objects, which tracemalloc does see (loaded
    # again, untimed: tracing slows the load).
    tracemalloc.start()
    held = service._rows(DEPLOYMENT, None, body.current)
    window_rows_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del held
    assert len(vectors[0]) == min(sample, n), "the reference's sample was not embedded"
    return {
        "records_per_window": n,
        "embedding_sample": sample,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "embed_and_store_s": cold_s - warm_s,
        "phases_s": phases,
        "baseline_rss_mb": baseline_mb,
        "window_rows_mb": window_rows_mb,
        "cold_peak_rss_mb": cold_peak_mb,
        "peak_rss_mb": peak_mb,
        "report_kb": len(html) / 1024,
        "drifted": cold.drifted,
        "share_drifted": cold.share_drifted,
        "embedding_drifted": cold.summary["embedding_drifted"],
        "same_verdict_warm": warm.drifted == cold.drifted and result.drifted == cold.drifted,
    }


def bench_drift(work: Path, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        home = work / f"drift-{n}"
        home.mkdir()
        populated = run_child("populate", home, n, 1)
        # The 100,000 case dominates the runtime: its warm run and phases at most twice.
        measured = run_child("drift", home, n, repeats if n <= 20_000 else min(repeats, 2))
        measured["insert_s"] = populated["insert_s"]
        results.append(measured)
    return results


# -- part 2: online scoring and embeddings ------------------------------------------------------


def child_online(home: Path, n: int, repeats: int) -> dict[str, Any]:
    from sqlmodel import Session, col, delete, select

    from evalhub.eval.metrics import create_metric
    from evalhub.eval.metrics.semantic_similarity import (
        default_model_path,
        embed,
        embedding_cache,
        load_model,
    )
    from evalhub.monitoring.drift import DriftService
    from evalhub.monitoring.drift_tables import PromptEmbeddingRow
    from evalhub.monitoring.frames import traffic_frame
    from evalhub.monitoring.online import prompt_case, score_rows
    from evalhub.monitoring.scheduler import run_pass
    from evalhub.monitoring.tables import OnlineScoreRow
    from evalhub.serving.deployments import OnlineMetric
    from evalhub.serving.tables import DeploymentRow, TrafficRow
    from registry.tables import utcnow

    platform = open_platform(home)
    step = timedelta(milliseconds=100)  # all within the hour a monitor pass looks back
    populate(platform, [(n, 3, True, utcnow() - step * (n + 1), step)])
    with Session(platform.engine) as session:
        rows = list(session.exec(select(TrafficRow).order_by(col(TrafficRow.created_at))))
    answered = [row for row in rows if row.status < 400 and row.response_text is not None]

    def clear_scores() -> None:
        with Session(platform.engine) as session:
            session.exec(delete(OnlineScoreRow))  # type: ignore[call-overload]
            session.commit()

    results: list[dict[str, Any]] = []
    for spec in (OnlineMetric(name="json_valid"), OnlineMetric(name="json_schema", schema=SCHEMA)):
        total_s, written = best_of(
            repeats, lambda spec=spec: score_rows(platform, rows, [spec]), before=clear_scores
        )
        metric = create_metric(spec.name, **spec.options)
        cases_s, cases = best_of(repeats, lambda: [prompt_case(row) for row in answered])
        outputs = [row.response_text or "" for row in answered]
        score_s, _ = best_of(repeats, lambda m=metric, o=outputs, c=cases: m.score(o, c))
        results.append(
            {
                "measure": f"score_rows {spec.name}",
                "records": written,
                "total_s": total_s,
                "us_per_record": total_s / written * 1e6,
                "metric_us_per_record": score_s / written * 1e6,
                "cases_us_per_record": cases_s / written * 1e6,
                "store_and_rest_us_per_record": (total_s - score_s - cases_s) / written * 1e6,
            }
        )

    # A scheduled pass once everything sampled is scored, at n and at 4n records in the hour it
    # looks back over: what every pass costs at that traffic.
    with Session(platform.engine) as session:
        deployment = session.exec(select(DeploymentRow)).one()
        deployment.monitoring = {
            "sample_rate": 0.2,
            "metrics": [{"name": "json_valid"}, {"name": "json_schema", "schema": SCHEMA}],
        }
        session.add(deployment)
        session.commit()
    clear_scores()
    for total in (n, 4 * n):
        if total > n:
            older = timedelta(seconds=3000 / (total - n))
            populate(platform, [(total - n, 4, True, utcnow() - older * (total - n), older)], False)
        first_pass_s, report = timed(lambda: run_pass(platform, DEPLOYMENT))
        idle_pass_s, _ = best_of(repeats, lambda: run_pass(platform, DEPLOYMENT))
        results.append(
            {
                "measure": f"monitor pass, all scored, {total:,} records in the hour",
                "records": total,
                "total_s": idle_pass_s,
                "us_per_record": idle_pass_s / total * 1e6,
                "first_pass_s": first_pass_s,
                "first_pass_scored": report.scored,
            }
        )

    # Embeddings: MiniLM on fresh prompts, the in-process cache, and the stored vectors.
    load_model(default_model_path())
    texts = [str(prompt_case(row).messages[-1].content) for row in rows[:2000]]
    cache = embedding_cache(default_model_path())
    fresh_s, _ = best_of(
        max(1, repeats - 1), lambda: embed(texts, default_model_path()), cache.clear
    )
    cached_s, _ = best_of(repeats, lambda: embed(texts, default_model_path()))
    frame = traffic_frame(rows[:2000])
    service = DriftService(platform)

    def forget_stored() -> None:
        cache.clear()
        with Session(platform.engine) as session:
            session.exec(delete(PromptEmbeddingRow))  # type: ignore[call-overload]
            session.commit()

    # Once: it costs as much as the fresh embedding above, plus the storing.
    service_s, _ = best_of(1, lambda: service._embeddings(frame, cached=True), forget_stored)
    stored_s, _ = best_of(repeats, lambda: service._embeddings(frame, cached=True))
    for measure, seconds in (
        ("embed, fresh prompts (MiniLM)", fresh_s),
        ("embed, in-process cache hit", cached_s),
        ("drift service: embed and store", service_s),
        ("drift service: read stored", stored_s),
    ):
        results.append(
            {
                "measure": measure,
                "records": len(texts),
                "total_s": seconds,
                "us_per_record": seconds / len(texts) * 1e6,
            }
        )
    return {"results": results, "peak_rss_mb": peak_rss_mb()}


# -- part 3: the gateway with monitoring on and off ---------------------------------------------


def gateway_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_gateway", Path(__file__).with_name("gateway.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_gateway(work: Path, requests: int) -> dict[str, Any]:
    import httpx

    from evalhub.child_server import child_server

    gateway = gateway_module()
    token = "ehk_bench_token_0123456789abcdef"
    upstream_port = gateway.free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    served = "bench/1"
    process = subprocess.Popen([sys.executable, "-c", gateway.UPSTREAM, str(upstream_port), served])
    env = {
        "EVALHUB_ADMIN_TOKEN": token,
        "EVALHUB_RUN_WORKER": "false",
        "EVALHUB_MONITOR_INTERVAL": "1",
    }
    home = work / "gateway"
    rounds: list[dict[str, Any]] = []
    try:
        gateway.wait_for(f"{upstream}/health")
        with child_server(home, env) as server:
            api = httpx.Client(
                base_url=f"{server.url}/api/v1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            api.post("/models", json={"name": "bench", "kind": "base"}).raise_for_status()
            model = gateway.make_model_dir(work / "model" / "model")
            archive = work / "model.tar"
            subprocess.run(
                ["tar", "cf", str(archive), "-C", str(model.parent), "model"], check=True
            )
            with archive.open("rb") as handle:
                api.post("/models/bench/versions", files={"file": handle}).raise_for_status()
            backend = {"name": "instant", "kind": "local", "base": served, "managed": False}
            api.post("/backends", json={**backend, "url": upstream}).raise_for_status()
            arms = [{"name": "only", "model": served, "weight": 100}]
            api.post(
                "/deployments", json={"name": DEPLOYMENT, "backend": "instant", "arms": arms}
            ).raise_for_status()
            settings = {
                "off": {"sample_rate": 0.0, "metrics": []},
                "on": {"sample_rate": 0.2, "metrics": [{"name": "json_valid"}]},
            }
            chat = "/v1/chat/completions"
            for round_index in range(2):
                direct = asyncio.run(gateway.load(f"{upstream}{chat}", token, requests, 1))
                measured: dict[str, Any] = {"round": round_index + 1, "direct": direct}
                for mode in ("off", "on") if round_index == 0 else ("on", "off"):
                    api.patch(
                        f"/deployments/{DEPLOYMENT}", json={"monitoring": settings[mode]}
                    ).raise_for_status()
                    before = scored(home)
                    measured[mode] = asyncio.run(
                        gateway.load(f"{server.url}{chat}", token, requests, 1)
                    )
                    time.sleep(2)  # the passes that follow the load
                    measured[mode]["scored_during"] = scored(home) - before
                rounds.append(measured)
    finally:
        process.terminate()
        process.wait(30)
    added = {
        mode: [r[mode]["p50_ms"] - r["direct"]["p50_ms"] for r in rounds] for mode in ("off", "on")
    }
    off, on = min(added["off"]), min(added["on"])  # the best of the two rounds each
    return {
        "requests_per_phase": requests,
        "concurrency": 1,
        "rounds": rounds,
        "added_p50_off_ms": off,
        "added_p50_on_ms": on,
        "ratio": on / off,
        "scored_while_on": sum(r["on"]["scored_during"] for r in rounds),
        "requests_while_on": 2 * (requests + 50),
    }


def scored(home: Path) -> int:
    with sqlite3.connect(f"file:{home / 'evalhub.db'}?mode=ro", uri=True, timeout=30) as db:
        return int(db.execute("select count(*) from online_scores").fetchone()[0])


# -- the report ---------------------------------------------------------------------------------


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(number(value) for value in row))
    Console(width=max(Console().width, 110)).print(table)


PHASES = {
    "load_rows": "  load rows, both windows",
    "frames": "  traffic frames",
    "sample_order": "  embedding sample order",
    "descriptors": "  text descriptors",
    "column_tests": "  column stattests",
    "embeddings_read": "  read stored embeddings",
    "embedding_classifier": "  embedding classifier",
    "html_report": "  HTML report",
    "storing_and_rest": "  storing the report and check, the rest",
}


def report(drift: list[dict[str, Any]], online: dict[str, Any], gate: dict[str, Any]) -> None:
    def line(label: str, values: list[float], growth: bool = True) -> list[Any]:
        ratio = values[-1] / values[0] if growth and len(values) > 1 and values[0] else "-"
        return [label, *values, ratio if isinstance(ratio, str) else f"x{ratio:.1f}"]

    def above_baseline(d: dict[str, Any]) -> float:
        return d["peak_rss_mb"] - d["baseline_rss_mb"]

    def met(d: dict[str, Any]) -> bool:
        return d["cold_s"] < TARGET_SECONDS and d["peak_rss_mb"] < TARGET_GB * 1024

    sizes = [d["records_per_window"] for d in drift]
    rows = [
        line("end to end, cold: embeds, stores 2x2000 s", [d["cold_s"] for d in drift]),
        line("end to end, warm: reuses them s", [d["warm_s"] for d in drift]),
        *(line(label, [d["phases_s"][key] for d in drift]) for key, label in PHASES.items()),
        line("embed and store 2x2000 (cold - warm) s", [d["embed_and_store_s"] for d in drift]),
        line("peak RSS MB", [d["peak_rss_mb"] for d in drift]),
        line("  peak above imports and MiniLM MB", [above_baseline(d) for d in drift]),
        line("  one window's row objects (tracemalloc) MB", [d["window_rows_mb"] for d in drift]),
        line("HTML report KB", [d["report_kb"] for d in drift]),
        line("share of checks drifted", [d["share_drifted"] for d in drift], growth=False),
        [
            f"target: < {TARGET_SECONDS:.0f} s and < {TARGET_GB:.0f} GB",
            *("met" if met(d) else "missed" for d in drift),
            "",
        ],
    ]
    print_table(
        "drift check (DriftService.run, first N vs last N), fresh process per size; "
        "warm run and phases: best of --repeats (at most 2 above 20,000)",
        ["measure", *(f"{n:,}/window" for n in sizes), "growth"],
        rows,
    )
    print_table(
        "online scoring and embeddings, per record (best of --repeats)",
        ["measure", "records", "total s", "µs/record", "of which metric / cases / storing µs"],
        [
            [
                r["measure"],
                r["records"],
                r["total_s"],
                r["us_per_record"],
                " / ".join(
                    number(r[key])
                    for key in (
                        "metric_us_per_record",
                        "cases_us_per_record",
                        "store_and_rest_us_per_record",
                    )
                )
                if "metric_us_per_record" in r
                else "",
            ]
            for r in online["results"]
        ],
    )
    print_table(
        f"gateway at concurrency 1, {gate['requests_per_phase']} requests a phase, monitor "
        "passes every 1 s; rounds interleaved off-on, on-off; best: the lower of the two",
        ["round", "direct p50 ms", "added p50 off ms", "added p50 on ms", "on/off", "scored"],
        [
            *(
                [
                    r["round"],
                    r["direct"]["p50_ms"],
                    r["off"]["p50_ms"] - r["direct"]["p50_ms"],
                    r["on"]["p50_ms"] - r["direct"]["p50_ms"],
                    (r["on"]["p50_ms"] - r["direct"]["p50_ms"])
                    / (r["off"]["p50_ms"] - r["direct"]["p50_ms"]),
                    r["on"]["scored_during"],
                ]
                for r in gate["rounds"]
            ),
            [
                "best",
                "",
                gate["added_p50_off_ms"],
                gate["added_p50_on_ms"],
                gate["ratio"],
                f"target < {TARGET_P50_RATIO}",
            ],
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--score-rows", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("bench/results/monitor.json"))
    parser.add_argument("--child", choices=["populate", "drift", "online"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        # Chi-square on `arm` and `version`, one category each here, divides by zero in scipy.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="scipy")
        children = {
            "populate": lambda: child_populate(args.home, args.n),
            "drift": lambda: child_drift(args.home, args.n, args.repeats),
            "online": lambda: child_online(args.home, args.n, args.repeats),
        }
        args.result.write_text(json.dumps(children[args.child](), default=str))
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as directory:
        work = Path(directory)
        drift = bench_drift(work, args.sizes, args.repeats)
        (work / "online").mkdir()
        online = run_child("online", work / "online", args.score_rows, args.repeats)
        gate = bench_gateway(work, args.requests)
    report(drift, online, gate)
    runtime = time.perf_counter() - started
    print(f"runtime {runtime:.0f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "monitor",
                "runtime_s": runtime,
                "targets": {
                    "drift_seconds": TARGET_SECONDS,
                    "drift_gb": TARGET_GB,
                    "gateway_p50_ratio": TARGET_P50_RATIO,
                },
                "drift": drift,
                "online": online,
                "gateway": gate,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
