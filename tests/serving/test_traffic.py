"""The traffic log keeps every record it journaled, on SQLite and PostgreSQL: through a database
outage, a restart, a record the database refuses, and values that do not fit their columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from evalhub.serving.tables import TrafficRow
from evalhub.serving.traffic import TrafficLog
from evalhub.serving.traffic_record import TrafficRecord


def record(index: int, **changes: Any) -> TrafficRecord:
    fields: dict[str, Any] = {
        "id": f"req-{index:04d}",
        "created_at": datetime(2026, 11, 29, 12, 0, index % 60, tzinfo=UTC),
        "deployment": "bot",
        "arm": "control",
        "model": "bot",
        "version": "bot/1",
        "digest": None,
        "user": None,
        "endpoint": "chat.completions",
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
    return TrafficRecord(**{**fields, **changes})


def stored_ids(engine: Any, table: str = "traffic") -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text(f"SELECT id FROM {table} ORDER BY id")).scalars())


def journaled(journal: Path) -> list[str]:
    return [
        json.loads(line)["id"]
        for path in sorted(journal.glob("*.jsonl"))
        if path.name != "dead-letter.jsonl"
        for line in path.read_text().splitlines()
        if line.startswith("{")
    ]


def test_records_survive_a_database_outage_and_a_restart(platform, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = platform.engine
    journal = tmp_path / "journal"
    log = TrafficLog(engine, journal, max_backoff=0.05)
    for index in range(3):
        log.record(record(index))
    assert log.flush()
    assert stored_ids(engine) == ["req-0000", "req-0001", "req-0002"]

    # The database loses the table: writes fail, the records wait in the journal, not in memory.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE traffic RENAME TO traffic_away"))
    for index in range(3, 8):
        log.record(record(index))
    assert not log.flush(timeout=0.5)
    assert log.backlog_bytes > 0
    log.close(timeout=0.5)
    # A segment goes once all of it is stored; replaying what was stored already is harmless.
    assert journaled(journal) == [f"req-{i:04d}" for i in range(8)]
    assert stored_ids(engine, "traffic_away") == ["req-0000", "req-0001", "req-0002"]

    # Back up: the next log writes the journaled records first, each once, and removes them.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE traffic_away RENAME TO traffic"))
    leftover = next(p for p in journal.glob("*.jsonl") if p.name != "dead-letter.jsonl")
    with leftover.open("a") as handle:
        handle.write(record(0).model_dump_json() + "\n")  # stored already
        handle.write('{"id": "req-0099", "created_at": "2026-11-')  # a line a crash cut short
    again = TrafficLog(engine, journal)
    again.record(record(8))
    assert again.flush()
    again.close()
    assert journaled(journal) == []
    assert stored_ids(engine) == [f"req-{i:04d}" for i in range(9)]
    dead = [json.loads(line) for line in (journal / "dead-letter.jsonl").read_text().splitlines()]
    assert [entry["record"][:17] for entry in dead] == ['{"id": "req-0099"']
    with engine.connect() as connection:
        kept = connection.execute(
            select(TrafficRow.request).where(TrafficRow.id == "req-0005")
        ).scalar_one()
    assert kept == {"messages": [{"role": "user", "content": "hello 5"}]}


def test_a_poisoned_batch_lands_its_good_records(platform, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Records the database refuses, amid good ones, in a journal left by a dead process."""
    engine = platform.engine
    journal = tmp_path / "journal"
    journal.mkdir()
    postgres = engine.dialect.name == "postgresql"
    lines = []
    for index in range(40):
        line = json.loads(record(index).model_dump_json())
        if index in (7, 23):  # past a 64-bit integer: both databases refuse it
            line["prompt_tokens"] = 2**70
        if index == 31 and postgres:  # past VARCHAR(200): only PostgreSQL refuses it
            line["user"] = "u" * 300
        lines.append(json.dumps(line))
    (journal / "123-dead.jsonl").write_text("\n".join(lines) + "\n")
    metrics = CollectorRegistry()
    log = TrafficLog(engine, journal, metrics=metrics)
    assert log.flush()
    log.close()
    refused = {7, 23, 31} if postgres else {7, 23}
    assert stored_ids(engine) == [f"req-{i:04d}" for i in range(40) if i not in refused]
    dead = [json.loads(line) for line in (journal / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted(json.loads(entry["record"])["id"] for entry in dead) == [
        f"req-{i:04d}" for i in sorted(refused)
    ]
    assert all(entry["error"] for entry in dead)
    assert metrics.get_sample_value("evalhub_traffic_dead_letter_total") == len(refused)
    assert journaled(journal) == []


def test_a_record_fits_its_columns_whatever_it_is_given(platform, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = platform.engine
    log = TrafficLog(engine, tmp_path / "journal")
    long_user, long_model = "u" * 300, "m" * 300
    log.record(
        record(
            0,
            user=long_user,
            model=long_model,
            request={"model": long_model, "user": long_user},
            response_text="nul\x00byte",
            prompt_tokens=2**70,
        )
    )
    for index in range(1, 11):
        log.record(record(index))
    assert log.flush()
    log.close()
    assert len(stored_ids(engine)) == 11
    with engine.connect() as connection:
        row = connection.execute(select(TrafficRow).where(TrafficRow.id == "req-0000")).one()
    assert len(row.user) == 200 and row.user.startswith("uuu") and len(row.model) == 200
    assert row.request == {"model": long_model, "user": long_user}  # the whole value is kept
    assert row.response_text == "nulbyte" and row.prompt_tokens is None
