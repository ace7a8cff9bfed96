"""The local backend over HTTP, through the stock `openai` client, on a real tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.serving.conftest import BASE_NAME, Models, free_socket

PROMPTS = ["repeat: cat dog bird", "say: RED fish", "echo: boat ROCK", "copy: frog"]
GREEDY = {"temperature": 0, "max_tokens": 16}


def chat(client: openai.OpenAI, model: str, prompt: str, **options: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **{**GREEDY, **options}
    )


def chat_text(client: openai.OpenAI, model: str, prompt: str, **options: Any) -> str:
    return chat(client, model, prompt, **options).choices[0].message.content


def complete_text(client: openai.OpenAI, model: str, prompt: str, **options: Any) -> str:
    response = client.completions.create(model=model, prompt=prompt, **{**GREEDY, **options})
    return response.choices[0].text


def reference_chat(models: Models, adapter: Path | None, prompt: str) -> str:
    """Plain transformers (+ peft, merged) greedy generate: what the server must reproduce."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.base)
    model = AutoModelForCausalLM.from_pretrained(models.base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        output = model.eval().generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_models_list_shows_the_base_and_adapters_with_parent_and_root(
    client: openai.OpenAI, models: Models
) -> None:
    cards = {card.id: card for card in client.models.list().data}
    assert {BASE_NAME, "alpha", "beta"} <= set(cards)
    assert cards[BASE_NAME].model_extra["parent"] is None
    assert cards[BASE_NAME].model_extra["max_model_len"] == 256
    for name, path in (("alpha", models.alpha), ("beta", models.beta)):
        assert cards[name].model_extra["parent"] == BASE_NAME
        assert cards[name].model_extra["root"] == str(path.resolve())


def test_chat_and_completions_answer_for_the_base_and_each_adapter(client: openai.OpenAI) -> None:
    answers = {}
    for model in (BASE_NAME, "alpha", "beta"):
        response = chat(client, model, PROMPTS[0])
        usage = response.usage
        assert response.model == model
        assert response.choices[0].finish_reason in {"stop", "length"}
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        answers[model] = response.choices[0].message.content
        completion = client.completions.create(model=model, prompt="the cat", **GREEDY)
        assert completion.usage.completion_tokens <= 16
        assert completion.choices[0].finish_reason in {"stop", "length"}
    assert len(set(answers.values())) == 3, answers  # each adapter really changes the answer


def test_greedy_answers_equal_plain_transformers_peft_generate(
    client: openai.OpenAI, models: Models
) -> None:
    for model, adapter in ((BASE_NAME, None), ("alpha", models.alpha), ("beta", models.beta)):
        for prompt in PROMPTS[:2]:
            assert chat_text(client, model, prompt) == reference_chat(models, adapter, prompt)


def test_streaming_reassembles_to_the_non_streaming_answer(client: openai.OpenAI) -> None:
    for model in (BASE_NAME, "alpha", "beta"):
        for prompt in PROMPTS[:2]:
            expected = chat(client, model, prompt)
            chunks = list(
                chat(client, model, prompt, stream=True, stream_options={"include_usage": True})
            )
            assert chunks[0].choices[0].delta.role == "assistant"
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert text == expected.choices[0].message.content
            assert finish[-1] == expected.choices[0].finish_reason
            assert chunks[-1].choices == [] and chunks[-1].usage == expected.usage

        expected_text = complete_text(client, model, "the cat")
        stream = client.completions.create(model=model, prompt="the cat", stream=True, **GREEDY)
        assert "".join(chunk.choices[0].text for chunk in stream) == expected_text


def test_stream_without_include_usage_carries_no_usage(client: openai.OpenAI) -> None:
    chunks = list(chat(client, "alpha", PROMPTS[0], stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_stop_sequences_cut_the_text_at_the_first_stop(client: openai.OpenAI) -> None:
    full = complete_text(client, "beta", "the cat")
    assert len(full) > 6, full
    stop = full[3:5]
    cut = full[: full.index(stop)]
    response = client.completions.create(model="beta", prompt="the cat", stop=[stop], **GREEDY)
    assert response.choices[0].text == cut
    assert response.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="beta", prompt="the cat", stop=stop, stream=True, **GREEDY
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == cut


def test_max_tokens_gives_finish_reason_length(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="beta", prompt="the cat", max_tokens=3, temperature=0
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_sampling_is_reproducible_with_a_seed_and_varies_without(client: openai.OpenAI) -> None:
    options = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12}
    first = complete_text(client, "alpha", "the cat", seed=7, **options)
    assert complete_text(client, "alpha", "the cat", seed=7, **options) == first
    others = {complete_text(client, "alpha", "the cat", seed=seed, **options) for seed in range(4)}
    assert len(others) > 1


def test_adapter_admin_api_load_unload_and_errors(
    client: openai.OpenAI, base_url: str, models: Models
) -> None:
    admin = httpx.Client(base_url=base_url, timeout=30)
    response = admin.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": "alpha"})
    assert response.status_code == 200, response.text
    assert "a2" in {card.id for card in client.models.list().data}
    # The same weights under another name answer the same.
    assert chat_text(client, "a2", PROMPTS[0]) == chat_text(client, "alpha", PROMPTS[0])

    again = admin.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": "beta"})
    assert again.status_code == 400
    assert "already been loaded" in again.json()["error"]["message"]

    # In place: the name now serves beta's weights.
    inplace = admin.post(
        "/v1/load_lora_adapter",
        json={"lora_name": "a2", "lora_path": str(models.beta), "load_inplace": True},
    )
    assert inplace.status_code == 200, inplace.text
    assert chat_text(client, "a2", PROMPTS[0]) == chat_text(client, "beta", PROMPTS[0])

    assert admin.post("/v1/unload_lora_adapter", json={"lora_name": "a2"}).status_code == 200
    assert "a2" not in {card.id for card in client.models.list().data}
    with pytest.raises(openai.NotFoundError) as missing:
        chat(client, "a2", PROMPTS[0])
    assert missing.value.body["message"] == "The model `a2` does not exist."
    assert missing.value.body["type"] == "NotFoundError"
    gone = admin.post("/v1/unload_lora_adapter", json={"lora_name": "a2"})
    assert gone.status_code == 404
    assert set(gone.json()["error"]) == {"message", "type", "param", "code"}

    bad_path = admin.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "nope"})
    assert bad_path.status_code == 404
    escape = admin.post(
        "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "../outside/gamma"}
    )
    assert escape.status_code == 400 and "outside the adapter root" in escape.text
    wide = admin.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "wide"})
    assert wide.status_code == 400 and "does not match" in wide.text
    clash = admin.post("/v1/load_lora_adapter", json={"lora_name": BASE_NAME, "lora_path": "beta"})
    assert clash.status_code == 400
    assert "x" not in {card.id for card in client.models.list().data}
    assert chat_text(client, BASE_NAME, PROMPTS[0])  # the base still serves after refusals


def test_openai_format_errors(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")
    with pytest.raises(openai.BadRequestError) as several:
        chat(client, "alpha", PROMPTS[0], n=2)
    assert several.value.body["param"] == "n"
    invalid = httpx.post(f"{base_url}/v1/chat/completions", json={"model": BASE_NAME})
    assert invalid.status_code == 400
    assert invalid.json()["error"]["type"] == "BadRequestError"
    assert httpx.get(f"{base_url}/health").status_code == 200


def test_mixed_concurrent_requests_answer_as_they_do_alone(client: openai.OpenAI) -> None:
    """The fault the vLLM CPU build has: base and adapter requests in flight together."""
    pairs = [(model, prompt) for prompt in PROMPTS for model in (BASE_NAME, "alpha", "beta")]
    jobs = [(model, prompt, index % 4 == 0) for index, (model, prompt) in enumerate(pairs)]

    def run(job: tuple[str, str, bool]) -> str:
        model, prompt, stream = job
        if not stream:
            return chat_text(client, model, prompt)
        chunks = chat(client, model, prompt, stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)

    alone = [run(job) for job in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(run, jobs))
        assert together == alone


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by init, maybe not at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_main_serves_a_model_and_adapters_and_stops_when_its_parent_is_killed(
    models: Models,
) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    command = [
        sys.executable,
        "-m",
        "evalhub.serving.local.server",
        "--model",
        str(models.base),
        "--served-model-name",
        "cli-tiny",
        "--port",
        str(port),
        "--adapter",
        f"alpha={models.alpha}",
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    # A stand-in for `evalhub serve`: it starts the backend in a session of its own, as the
    # supervisor does, and is then killed before it can stop it.
    parent_code = (
        "import subprocess, sys, time; "
        f"backend = subprocess.Popen({command!r}, start_new_session=True); "
        "print(backend.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    backend = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while True:
            assert _running(backend), "the server exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.2)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
            assert {card.id for card in client.models.list().data} == {"cli-tiny", "alpha"}
            assert chat_text(client, "alpha", PROMPTS[0])
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _running(backend):
            assert time.monotonic() < deadline, "the backend outlived its killed parent"
            time.sleep(0.2)
    finally:
        parent.kill()
        if _running(backend):
            os.kill(backend, signal.SIGKILL)
