"""Alias moves are atomic: 50 concurrent moves leave exactly 50 consistent history entries."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

from registry.store import RegistryStore


def test_fifty_concurrent_alias_moves_keep_a_consistent_chain(
    store: RegistryStore, model_dirs
) -> None:
    store.create_model("tiny", "base")
    for _ in range(3):
        store.register_version("tiny", model_dirs["base"])

    def move(index: int) -> int:
        return store.set_alias("tiny", "production", index % 3 + 1, actor=f"w{index}").id

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(move, range(50)))

    history = store.alias_history("tiny", "production", limit=1000).data
    assert len(history) == 50 and sorted(ids) == [entry.id for entry in history]
    assert history[0].from_version is None
    for previous, entry in pairwise(history):
        assert entry.from_version == previous.to_version, (previous, entry)
    assert store.get_alias("tiny", "production").version == history[-1].to_version
    assert sorted(entry.actor for entry in history) == sorted(f"w{i}" for i in range(50))
