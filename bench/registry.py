"""Registry benchmark: alias resolve latency (p50, p99) and alias moves per second, SQLite and PostgreSQL.

Run: .venv/bin/python bench/registry.py [--resolves 5000] [--moves 500]
Prints a table and writes bench/results/registry.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `registry` package; drop that folder so the package is found.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from evalhub.platform import Platform
from evalhub.settings import Settings
from registry.db import create_engine

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_model_dir(directory: Path) -> Path:
    """A minimal but valid model directory (config + safetensors header), no torch needed."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    )
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    (directory / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * 16
    )
    return directory


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(database: str, url: str, home: Path, resolves: int, moves: int) -> dict[str, float | str]:
    platform = Platform.open(Settings(home=home, database_url=url, _env_file=None))
    store = platform.registry
    store.create_model("bench", "base")
    model_dir = make_model_dir(home / "model")
    for _ in range(3):
        store.register_version("bench", model_dir)
    store.set_alias("bench", "production", 1)

    for _ in range(100):  # warm the pool and caches
        store.resolve("bench@production")
    latencies = []
    for _ in range(resolves):
        start = time.perf_counter()
        store.resolve("bench@production")
        latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    for index in range(moves):
        store.set_alias("bench", "candidate", index % 3 + 1)
    sequential = moves / (time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: store.set_alias("bench", "shadow", i % 3 + 1), range(moves)))
    concurrent = moves / (time.perf_counter() - start)
    history = store.alias_history("bench", "shadow", limit=1000).data
    assert len(history) == moves, "a concurrent move was lost"
    platform.close()
    return {
        "database": database,
        "resolve_p50_ms": round(statistics.median(latencies), 3),
        "resolve_p99_ms": round(percentile(latencies, 0.99), 3),
        "resolves_per_s": round(1000 / statistics.mean(latencies), 1),
        "moves_per_s_sequential": round(sequential, 1),
        "moves_per_s_8_threads": round(concurrent, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolves", type=int, default=5000)
    parser.add_argument("--moves", type=int, default=500)
    parser.add_argument("--output", type=Path, default=Path("bench/results/registry.json"))
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        results.append(
            run("sqlite", f"sqlite:///{root / 'a.db'}", root / "a", args.resolves, args.moves)
        )
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(POSTGRES_URL)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
            results.append(run("postgresql", url, root / "b", args.resolves, args.moves))
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))

    table = Table(title="registry: alias resolve and move")
    for column in results[0]:
        table.add_column(column)
    for row in results:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"benchmark": "registry", "results": results}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
