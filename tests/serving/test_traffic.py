"""The traffic log keeps every record it accepted, on SQLite and PostgreSQL, database down or not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from evalhub.serving.tables import TrafficRow
from evalhub.serving.traffic import TrafficLog


def row(index: int) -> dict[str, Any]:
    return {
        "id": f"req-{index:04d}",
        "created_at": datetime(2026, 11, 29, 12, 0, index % 60, tzinfo=UTC),
        "deployment": "bot",
        "arm": "control",
        "model": "bot",
        "version": "bot/1",
        "digest": None,
        "user": None,
        "endpoint": "chat/completions",
        "request": {"messages": [{"role": "user", "content": f"hello {index}"}]},
        "response_text": "hi",
        "status": 200,
        "error": None,
        "stream": False,
        "latency_ms": 1.5,
        "ttft_ms": None,
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "cost": None,
    }


def stored(engine: Any, table: str = "traffic") -> int:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_records_survive_a_database_outage_at_shutdown(platform, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = platform.engine
    spill = tmp_path / "spill.jsonl"
    log = TrafficLog(engine, spill=spill, max_backoff=0.05)
    for index in range(3):
        log.record(row(index))
    log.flush()
    assert stored(engine) == 3

    # The database loses the table: writes fail until shutdown, then the records go to the file.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE traffic RENAME TO traffic_away"))
    for index in range(3, 8):
        log.record(row(index))
    log.close()
    assert log.spilled == 5
    kept = [json.loads(line)["id"] for line in spill.read_text().splitlines()]
    assert kept == [f"req-{i:04d}" for i in range(3, 8)]
    assert stored(engine, "traffic_away") == 3

    # Back up: the next log writes the kept records first, each once, and removes the file.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE traffic_away RENAME TO traffic"))
    spill.write_text(spill.read_text() + json.dumps(row(0), default=str) + "\n")  # stored already
    with spill.open("a") as handle:  # and a line a crash cut short
        handle.write('{"id": "req-0099", "created_at": "2026-11-')
    again = TrafficLog(engine, spill=spill)
    again.record(row(8))
    again.close()
    assert not spill.exists()
    assert spill.with_suffix(".unreadable").read_text().startswith('{"id": "req-0099"')
    with engine.connect() as connection:
        ids = connection.execute(select(TrafficRow.id).order_by(TrafficRow.id)).scalars().all()
        kept_request = connection.execute(
            select(TrafficRow.request).where(TrafficRow.id == "req-0005")
        ).scalar_one()
        assert connection.execute(select(func.count()).select_from(TrafficRow)).scalar_one() == 9
    assert ids == [f"req-{i:04d}" for i in range(9)]
    assert kept_request == {"messages": [{"role": "user", "content": "hello 5"}]}
