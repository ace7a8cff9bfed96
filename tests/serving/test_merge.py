"""Merging a really trained DoRA adapter into its base: registered once (also under concurrent
requests), linked by lineage, and answering exactly like the unmerged adapter (float32, greedy)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evalhub.serving.deployments import Arm, DeploymentCreate, DeploymentService
from evalhub.serving.merge import ensure_merged
from evalhub.serving.tables import BackendRow
from registry.errors import ErrorCode, RegistryError

PROMPTS = ["upper: cat dog", "upper: sun moon star", "upper: tree fish", "repeat: bird cat"]


def _register(platform, base: Path, adapter: Path, name: str = "upper") -> str:  # type: ignore[no-untyped-def]
    registry = platform.registry
    registry.create_model("tiny", "base")
    registry.register_version("tiny", base)
    registry.create_model(name, "adapter")
    return registry.register_version(name, adapter, base="tiny/1").ref


def _answers(model_dir: Path, adapter: Path | None = None) -> list[str]:
    from evalhub.serving.local.engine import LocalEngine
    from evalhub.serving.local.generation import GenerationRequest, SamplingParams

    engine = LocalEngine(model_dir, device="cpu")
    if adapter is not None:
        engine.load_adapter("dora", adapter)
    return [
        engine.generate(
            GenerationRequest(
                adapter="dora" if adapter is not None else None,
                messages=[{"role": "user", "content": prompt}],
                sampling=SamplingParams(max_tokens=12, temperature=0),
            )
        ).text
        for prompt in PROMPTS
    ]


def test_merged_once_with_lineage_and_the_adapters_answers(  # type: ignore[no-untyped-def]
    platform, vllm_sized_base: Path, dora_adapter: Path
) -> None:
    ref = _register(platform, vllm_sized_base, dora_adapter)
    adapter = platform.registry.resolve(ref)
    assert adapter.peft_method == "dora"

    first = ensure_merged(platform, adapter, actor="test")
    again = ensure_merged(platform, adapter, actor="test")
    assert first.created and not again.created
    assert again.version.ref == first.version.ref == "upper-merged/1"
    assert again.version.digest == first.version.digest
    assert first.version.kind.value == "base"
    assert first.version.tags["merged_from"] == adapter.digest
    assert [v.ref for v in platform.registry.search_versions("upper-merged").data] == [
        "upper-merged/1"
    ]

    edges = [e for e in platform.registry.lineage("upper", 1).downstream]
    assert [(e.relation, e.target_id) for e in edges] == [("merged_into", "upper-merged/1")]
    assert edges[0].attributes["adapter_digest"] == adapter.digest
    assert edges[0].attributes["base_digest"] == adapter.base_digest

    merged_dir = platform.registry.artifacts.materialize(first.version.digest)
    assert (merged_dir / "tokenizer.json").is_file() and (merged_dir / "config.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    expected = _answers(vllm_sized_base, dora_adapter)
    assert _answers(merged_dir) == expected
    assert expected != _answers(vllm_sized_base)  # the adapter changes the answers


def test_concurrent_requests_merge_once(  # type: ignore[no-untyped-def]
    platform, vllm_sized_base: Path, dora_adapter: Path
) -> None:
    adapter = platform.registry.resolve(_register(platform, vllm_sized_base, dora_adapter))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_merged(platform, adapter), range(4)))
    assert sum(result.created for result in results) == 1
    assert {result.version.ref for result in results} == {"upper-merged/1"}
    assert len(platform.registry.search_versions("upper-merged").data) == 1


def test_arms_on_vllm_refuse_adapter_and_name_the_backend_to_start(  # type: ignore[no-untyped-def]
    platform, vllm_sized_base: Path, dora_adapter: Path
) -> None:
    from sqlmodel import Session

    ref = _register(platform, vllm_sized_base, dora_adapter)
    base = platform.registry.resolve("tiny/1")
    with Session(platform.engine) as session:  # a vLLM backend's row; no server is asked here
        session.add(
            BackendRow(
                name="gpu-1", kind="vllm", managed=False, urls=["http://127.0.0.1:9/v1"],
                base_ref=base.ref, base_digest=base.digest, served_name=base.ref,
            )
        )  # fmt: skip
        session.commit()
    service = DeploymentService(platform)

    def create(serve: str) -> None:
        arm = Arm(name="main", model=ref, weight=100, serve=serve)  # type: ignore[arg-type]
        service.create(DeploymentCreate(name="bot", backend="gpu-1", arms=[arm]), actor="test")

    with pytest.raises(RegistryError) as refused:
        create("adapter")
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert "cannot load upper/1: vLLM does not load DoRA adapters" in refused.value.message
    assert "serve: merged" in refused.value.message
    assert service.list() == []
    assert "upper-merged" not in [m.name for m in platform.registry.search_models().data]

    with pytest.raises(RegistryError) as missing:
        create("auto")
    assert missing.value.code is ErrorCode.FAILED_PRECONDITION
    assert "evalhub backend vllm --base upper-merged/1" in missing.value.message
    assert service.list() == []


def test_the_merge_route_merges_then_reuses(  # type: ignore[no-untyped-def]
    platform, vllm_sized_base: Path, dora_adapter: Path
) -> None:
    from fastapi.testclient import TestClient

    from evalhub.api.app import create_app
    from evalhub.auth.tokens import create_token

    _register(platform, vllm_sized_base, dora_adapter)
    _, secret = create_token(platform.engine, "editor-token", "editor", actor="test")
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(platform=platform)) as client:
        first = client.post("/api/v1/models/upper/versions/1/merge", headers=headers)
        again = client.post("/api/v1/models/upper/versions/1/merge", headers=headers)
        base = client.post("/api/v1/models/tiny/versions/1/merge", headers=headers)
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert (again.status_code, again.json()["created"]) == (200, False)
    assert first.json()["merged"]["ref"] == again.json()["merged"]["ref"] == "upper-merged/1"
    assert base.status_code == 400 and "only an adapter can be merged" in base.text


def test_a_dora_adapter_reloaded_in_place_answers_with_its_new_weights(
    vllm_sized_base: Path, dora_adapter: Path, tmp_path: Path
) -> None:
    """The local engine keeps each DoRA adapter's weight norms between tokens (peft's DoRA
    cache): a reload under the same name must answer from the new weights, never the old norms."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evalhub.serving.local.engine import LocalEngine
    from evalhub.serving.local.generation import GenerationRequest, SamplingParams

    torch.manual_seed(3)
    other = get_peft_model(
        AutoModelForCausalLM.from_pretrained(vllm_sized_base),
        LoraConfig(r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, parameter in other.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    other.save_pretrained(tmp_path / "other")

    def answers(engine: LocalEngine) -> list[str]:
        return [
            engine.generate(
                GenerationRequest(
                    adapter="bot",
                    messages=[{"role": "user", "content": prompt}],
                    sampling=SamplingParams(max_tokens=12, temperature=0),
                )
            ).text
            for prompt in PROMPTS
        ]

    engine = LocalEngine(vllm_sized_base, device="cpu")
    engine.load_adapter("bot", dora_adapter)
    trained = answers(engine)
    engine.load_adapter("bot", tmp_path / "other", load_inplace=True)
    reloaded = answers(engine)
    assert trained == _answers(vllm_sized_base, dora_adapter)
    assert reloaded == _answers(vllm_sized_base, tmp_path / "other") != trained
