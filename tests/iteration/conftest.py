"""The iteration loop's tests train the tiny model; it is built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalhub.finetune.tasks import upper_case_task, write_jsonl
from tests.finetune.conftest import one_thread, register_tiny_base, tiny_base  # noqa: F401
from tests.iteration.test_checkpoint_eval import held_out_cases


@pytest.fixture
def sweep_data(platform, tiny_base: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The tiny base, 200 training rows (upper-train) and the held-out cases (upper-held-out)."""
    register_tiny_base(platform, tiny_base)
    registry = platform.registry
    registry.add_dataset_version(
        "upper-held-out", write_jsonl(tmp_path / "cases.jsonl", held_out_cases()),
        format="eval", create=True,
    )  # fmt: skip
    registry.add_dataset_version(
        "upper-train", write_jsonl(tmp_path / "train.jsonl", upper_case_task(200, seed=0)),
        format="chat", create=True,
    )  # fmt: skip
