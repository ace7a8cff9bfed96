"""The scheduled monitor passes: one process at a time holds the lease, on SQLite and PostgreSQL,
and a lease whose holder stopped renewing it passes to another."""

from __future__ import annotations

import time

from sqlmodel import Session

from evalhub.monitoring.scheduler import LEASE, MonitorScheduler, take_lease
from evalhub.monitoring.tables import MonitorLeaseRow
from evalhub.platform import Platform


def test_one_holder_at_a_time_until_the_lease_expires(platform: Platform) -> None:
    assert take_lease(platform, "server-a", 0.5)
    assert not take_lease(platform, "server-b", 0.5)
    assert take_lease(platform, "server-a", 0.5)  # renewed by its holder
    time.sleep(0.6)
    assert take_lease(platform, "server-b", 30)  # a holder that stopped renewing loses it
    assert not take_lease(platform, "server-a", 30)


def test_a_scheduler_runs_passes_and_holds_the_lease(platform: Platform) -> None:
    scheduler = MonitorScheduler(platform, interval=0.1).start()
    try:
        deadline = time.monotonic() + 10
        row = None
        while row is None and time.monotonic() < deadline:
            time.sleep(0.1)
            with Session(platform.engine) as session:
                row = session.get(MonitorLeaseRow, LEASE)
        assert row is not None and row.holder == scheduler.holder
        assert not take_lease(platform, "another-server", 1)
    finally:
        scheduler.stop()
