"""The store's contract, run against SQLite and PostgreSQL (the `store` fixture is parametrised)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.entities import LineageInput, ModelKind, VersionStatus
from registry.errors import ErrorCode, RegistryError


def stored_files(root: Path) -> set[str]:
    """Blobs and tree manifests: what a registration writes (checkouts are a cache)."""
    return {
        str(p.relative_to(root))
        for sub in ("blobs", "trees")
        for p in (root / sub).rglob("*")
        if p.is_file()
    }


def expect(code: ErrorCode, call, *args, **kwargs) -> RegistryError:  # type: ignore[no-untyped-def]
    with pytest.raises(RegistryError) as caught:
        call(*args, **kwargs)
    assert caught.value.code is code, caught.value.message
    return caught.value


@pytest.fixture
def tiny(store, model_dirs):  # type: ignore[no-untyped-def]
    """A base model `tiny` with version 1 and an adapter model `bot`."""
    store.create_model("tiny", "base", description="tiny llama")
    store.register_version("tiny", model_dirs["base"])
    store.create_model("bot", "adapter")
    return store


def test_models_are_created_once_with_valid_names(store) -> None:
    model = store.create_model("bot", ModelKind.ADAPTER, description="d", tags={"team": "ml"})
    assert (model.name, model.kind, model.tags, model.latest_version) == (
        "bot", ModelKind.ADAPTER, {"team": "ml"}, None,
    )  # fmt: skip
    expect(ErrorCode.ALREADY_EXISTS, store.create_model, "bot", "adapter")
    expect(ErrorCode.INVALID_ARGUMENT, store.create_model, "Bad Name", "adapter")
    expect(ErrorCode.INVALID_ARGUMENT, store.create_model, "ok", "lora")
    expect(ErrorCode.NOT_FOUND, store.get_model, "missing")
    updated = store.update_model("bot", description="new")
    assert updated.description == "new" and updated.tags == {"team": "ml"}


def test_base_version_records_what_the_directory_holds(store, model_dirs) -> None:
    import torch
    from transformers import LlamaForCausalLM

    store.create_model("tiny", "base")
    version = store.register_version("tiny", model_dirs["base"])
    model = LlamaForCausalLM.from_pretrained(model_dirs["base"])
    assert version.ref == "tiny/1" and version.status is VersionStatus.READY
    assert version.architecture == "LlamaForCausalLM"
    assert version.parameter_count == sum(t.numel() for t in model.state_dict().values())
    assert version.dtype == "float32"
    assert version.digest.startswith("sha256:")
    # The stored copy is byte-identical and loads.
    stored = store.model_path("tiny/1")
    assert torch.equal(
        LlamaForCausalLM.from_pretrained(stored).model.embed_tokens.weight,
        model.model.embed_tokens.weight,
    )
    # Same content again is a new version with the same digest, stored once.
    artifacts = store.artifacts
    again = store.register_version("tiny", model_dirs["base_copy"])
    assert again.version == 2 and again.digest == version.digest
    assert artifacts.has_tree(version.digest)


def test_adapter_version_records_peft_config_base_and_lineage(tiny, model_dirs) -> None:
    store = tiny
    dataset, _ = store.add_dataset_version(
        "chats", _jsonl(model_dirs["base"].parent / "chats.jsonl", 12), format="chat", create=True
    )
    lineage = LineageInput(
        dataset=dataset.ref,
        training_job="ftjob-1",
        hyperparameters={"lr": 0.003},
        seed=7,
        code_version="abc123",
        metrics={"exact_match": 0.9},
    )
    version = store.register_version("bot", model_dirs["adapter"], base="tiny", lineage=lineage)
    assert version.base == "tiny/1" and version.peft_method == "lora"
    assert (version.rank, version.alpha, sorted(version.target_modules or [])) == (
        4, 8.0, ["q_proj", "v_proj"],
    )  # fmt: skip
    assert version.trainable_parameters == 2 * 2 * (4 * 64 + 64 * 4)
    assert version.trained_on == "tiny/1"
    assert (version.dataset, version.seed, version.code_version) == ("chats/1", 7, "abc123")

    lineage_view = store.lineage("bot", 1)
    assert lineage_view.base is not None and lineage_view.base.ref == "tiny/1"
    assert lineage_view.dataset is not None and lineage_view.dataset.digest == dataset.digest
    assert [e.source_id for e in lineage_view.upstream] == ["ftjob-1"]
    assert store.lineage("tiny", 1).derived == ["bot/1"]

    store.add_lineage_edge(("model_version", "bot/1"), "evaluated_in", ("eval_run", "run-9"))
    downstream = store.lineage("bot", 1).downstream
    assert [(e.relation, e.target_id) for e in downstream] == [("evaluated_in", "run-9")]


def test_refused_registrations_leave_no_row_and_no_file(tiny, model_dirs) -> None:
    store = tiny
    artifacts_root = Path(store.artifacts.root)
    before_files = stored_files(artifacts_root)

    error = expect(ErrorCode.INVALID_ARGUMENT, store.register_version, "bot", model_dirs["adapter"])
    assert "tiny/1" in error.message  # says which base it was trained on
    store.create_model("wide", "base")
    store.register_version("wide", model_dirs["wide"])
    after_wide = stored_files(artifacts_root)

    # Trained on a base of width 64, named on a base of width 96: refused, naming both.
    error = expect(
        ErrorCode.INVALID_ARGUMENT,
        store.register_version, "bot", model_dirs["adapter"], base="wide/1",
    )  # fmt: skip
    assert "tiny/1" in error.message and "wide/1" in error.message
    # An adapter directory under a base model, and a base under an adapter model.
    expect(ErrorCode.INVALID_ARGUMENT, store.register_version, "tiny", model_dirs["adapter"])
    expect(ErrorCode.INVALID_ARGUMENT, store.register_version, "bot", model_dirs["base"])
    expect(ErrorCode.NOT_FOUND, store.register_version, "bot", model_dirs["adapter"], base="nope/1")
    expect(
        ErrorCode.NOT_FOUND, store.register_version, "bot", model_dirs["adapter"],
        base="tiny", lineage=LineageInput(dataset="nothing/1"),
    )  # fmt: skip
    assert store.search_versions("bot").data == []
    assert stored_files(artifacts_root) == after_wide
    assert before_files < after_wide


def test_resolve_understands_latest_version_and_alias(tiny, model_dirs) -> None:
    store = tiny
    store.register_version("bot", model_dirs["adapter"], base="tiny/1")
    store.register_version("bot", model_dirs["adapter2"], base="tiny/1")
    assert store.resolve("bot").version == 2
    assert store.resolve("bot/1").version == 1
    store.set_alias("bot", "production", 1)
    assert store.resolve("bot@production").version == 1
    store.update_version("bot", 2, status="archived")
    assert store.resolve("bot").version == 1  # latest *ready*
    expect(ErrorCode.NOT_FOUND, store.resolve, "bot/9")
    expect(ErrorCode.NOT_FOUND, store.resolve, "bot@staging")
    expect(ErrorCode.NOT_FOUND, store.resolve, "ghost")
    expect(ErrorCode.INVALID_ARGUMENT, store.resolve, "bot/0")
    expect(ErrorCode.INVALID_ARGUMENT, store.resolve, "bot@@x")


def test_alias_history_rollback_and_time_travel(tiny, model_dirs) -> None:
    store = tiny
    for _ in range(3):
        store.register_version("tiny", model_dirs["base"])
    first = store.set_alias("tiny", "production", 1, reason="launch", actor="alice")
    time.sleep(0.02)
    between = datetime.now(UTC)
    time.sleep(0.02)
    store.set_alias("tiny", "production", 3, actor="bob")
    assert store.get_alias("tiny", "production").version == 3
    move = store.rollback_alias("tiny", "production", actor="carol")
    assert (move.action, move.from_version, move.to_version) == ("rollback", 3, 1)
    assert store.get_alias("tiny", "production").version == 1

    history = store.alias_history("tiny", "production").data
    assert [(h.action, h.from_version, h.to_version, h.actor) for h in history] == [
        ("set", None, 1, "alice"),
        ("set", 1, 3, "bob"),
        ("rollback", 3, 1, "carol"),
    ]
    assert history[0].reason == "launch"
    held = store.alias_at("tiny", "production", between)
    assert held is not None and held.version == 1
    assert store.alias_at("tiny", "production", first.created_at.replace(year=2000)) is None

    store.delete_alias("tiny", "production")
    expect(ErrorCode.NOT_FOUND, store.get_alias, "tiny", "production")
    assert store.alias_history("tiny", "production").data[-1].to_version is None
    expect(ErrorCode.NOT_FOUND, store.delete_alias, "tiny", "production")


def test_alias_rules(tiny, model_dirs) -> None:
    store = tiny
    store.register_version("tiny", model_dirs["base"])
    expect(ErrorCode.NOT_FOUND, store.set_alias, "tiny", "production", 7)
    expect(ErrorCode.INVALID_ARGUMENT, store.set_alias, "tiny", "Prod!", 1)
    store.set_alias("tiny", "candidate", 2)
    expect(ErrorCode.FAILED_PRECONDITION, store.rollback_alias, "tiny", "candidate")
    expect(ErrorCode.NOT_FOUND, store.rollback_alias, "tiny", "never")
    # A version that carries an alias cannot be archived; an archived one cannot get an alias.
    expect(ErrorCode.FAILED_PRECONDITION, store.update_version, "tiny", 2, status="archived")
    store.update_version("tiny", 1, status="archived")
    expect(ErrorCode.FAILED_PRECONDITION, store.set_alias, "tiny", "candidate", 1)
    assert store.get_alias("tiny", "candidate").version == 2
    assert store.get_model("tiny").aliases == {"candidate": 2}


def test_datasets_are_content_addressed(store, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "train.jsonl", 12)
    first, created = store.add_dataset_version("chats", path, format="chat", create=True)
    assert created and first.ref == "chats/1" and first.row_count == 12
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    again, created = store.add_dataset_version("chats", copy, format="chat")
    assert not created and again.ref == "chats/1"
    second, created = store.add_dataset_version(
        "chats", _jsonl(tmp_path / "more.jsonl", 13), format="chat", split="train"
    )
    assert created and second.version == 2 and second.split == "train"
    assert store.resolve_dataset("chats").version == 2
    assert store.dataset_path("chats/1").read_bytes() == path.read_bytes()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{"messages": [}\n')
    error = expect(
        ErrorCode.INVALID_ARGUMENT, store.add_dataset_version, "chats", bad, format="chat"
    )
    assert "bad.jsonl:2" in error.message
    no_messages = tmp_path / "eval.jsonl"
    no_messages.write_text('{"input": "x", "expected": "y"}\n')
    expect(
        ErrorCode.INVALID_ARGUMENT, store.add_dataset_version, "chats", no_messages, format="chat"
    )
    assert store.add_dataset_version("cases", no_messages, format="eval", create=True)[1]
    expect(ErrorCode.NOT_FOUND, store.add_dataset_version, "nothing", path, format="chat")
    assert store.get_dataset("chats").latest_version == 2


def test_lists_are_paged(store) -> None:
    for index in range(5):
        store.create_model(f"m{index}", "base")
    seen, token, pages = [], None, 0
    while True:
        page = store.search_models(limit=2, page_token=token)
        seen += [m.name for m in page.data]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert seen == [f"m{i}" for i in range(5)] and pages == 3
    expect(ErrorCode.INVALID_ARGUMENT, store.search_models, page_token="garbage!")
    expect(ErrorCode.INVALID_ARGUMENT, store.search_models, limit=0)


def test_delete_model_refused_while_adapters_build_on_it(tiny, model_dirs) -> None:
    store = tiny
    store.register_version("bot", model_dirs["adapter"], base="tiny/1")
    store.set_alias("bot", "production", 1)
    expect(ErrorCode.FAILED_PRECONDITION, store.delete_model, "tiny")
    store.delete_model("bot")
    expect(ErrorCode.NOT_FOUND, store.get_model, "bot")
    store.delete_model("tiny")
    assert store.search_models().data == []


def _jsonl(path: Path, rows: int) -> Path:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"upper: word{i}"},
                    {"role": "assistant", "content": f"WORD{i}"},
                ]
            }
        )
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
