"""`evalhub eval` and `evalhub gate` as subprocesses, against a scripted OpenAI-compatible server
on 127.0.0.1: in-process on a local home, and through a real `evalhub serve` with its worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from evalhub.child_server import child_server
from tests.eval.scripted_capitals import N_CASES, SUITE, scripted_capitals
from tests.scripted_server import ScriptedServer

SECRET = "sk-scripted-secret-0123456789"


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "EVALHUB_HOME": str(home), "COLUMNS": "200", **extra}
    for key in ("EVALHUB_URL", "EVALHUB_TOKEN", "EVALHUB_DATABASE_URL", "EVALHUB_SERVING_URL"):
        if key not in extra:
            env.pop(key, None)
    return env


def evalhub(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evalhub", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_eval_run_show_compare_in_process(tmp_path: Path, start_scripted_server) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    env = cli_env(tmp_path / "home", EVAL_KEY=SECRET)
    endpoint = ["--endpoint", scripted.base_url, "--api-key-env", "EVAL_KEY"]
    output = tmp_path / "run.json"
    ran = evalhub(env, "eval", "run", str(SUITE), "--model", "base-model", *endpoint,
                  "--output", str(output))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert (
        "completed: overall" in ran.stdout and f"{N_CASES} generations, 0 from cache" in ran.stdout
    )
    assert scripted.calls == N_CASES
    run = json.loads(output.read_text())
    assert run["metrics"]["exact_match"]["aggregate"]["value"] == pytest.approx(14 / 16)
    assert {r["case_id"]: r["scores"]["exact_match"]["value"] for r in run["results"]}["br"] == 0

    again = evalhub(env, "eval", "run", str(SUITE), "--model", "base-model", *endpoint)
    assert again.returncode == 0, again.stderr
    assert f"{N_CASES} from cache" in again.stdout
    assert scripted.calls == N_CASES, "the second run on the same target generated again"
    second_id = re.search(r"(evalrun-[0-9a-f]+)", again.stdout).group(1)  # type: ignore[union-attr]

    shown = json.loads(evalhub(env, "eval", "show", run["run_id"], "--json").stdout)
    assert shown["status"] == "completed" and shown["case_count"] == N_CASES
    assert shown["cache_identity"] == f"{scripted.base_url}#base-model"
    compared = evalhub(env, "eval", "compare", run["run_id"], second_id, "--json")
    comparison = json.loads(compared.stdout)
    assert comparison["metrics"]["exact_match"]["difference"] == 0
    # chrf's headline is corpus-level, not the per-case mean the statistics pair: it says so.
    corpus_chrf = run["metrics"]["chrf"]["aggregate"]["value"]
    assert comparison["metrics"]["chrf"]["baseline_mean"] != pytest.approx(corpus_chrf)
    [chrf_note] = [note for note in comparison["notes"] if note.startswith("chrf:")]
    assert f"{corpus_chrf:.4g} (baseline)" in chrf_note
    assert not any(note.startswith("exact_match:") for note in comparison["notes"])
    table = evalhub(env, "eval", "compare", run["run_id"], second_id).stdout
    assert "exact_match" in table and "16 shared cases" in table
    assert "note: chrf: compared as the mean of per-case scores" in table

    # The key went to the endpoint only: nothing on disk holds it.
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    missing = evalhub(env, "eval", "run", str(SUITE), "--model", "m", "--endpoint",
                      scripted.base_url, "--api-key-env", "NOT_SET_ANYWHERE")  # fmt: skip
    assert missing.returncode == 1 and "NOT_SET_ANYWHERE" in missing.stderr
    registry_ref = evalhub(env, "eval", "run", str(SUITE), "--model", "nothing@candidate")
    assert registry_ref.returncode == 1 and "model 'nothing' does not exist" in registry_ref.stderr
    assert "Traceback" not in missing.stderr + registry_ref.stderr


def gate(env: dict[str, str], tmp_path: Path, endpoint: str, candidate: str, *suites: Path):  # type: ignore[no-untyped-def]
    reports = {name: tmp_path / f"{candidate}.{name}" for name in ("xml", "md", "json")}
    args = [arg for suite in suites or (SUITE,) for arg in ("--suite", str(suite))]
    result = evalhub(env, "gate", *args, "--candidate", candidate, "--baseline", "base-model",
                     "--endpoint", endpoint, "--junit", str(reports["xml"]),
                     "--summary", str(reports["md"]), "--output", str(reports["json"]))  # fmt: skip
    return result, reports


def test_gate_exit_codes_on_better_equal_worse_and_broken(
    tmp_path: Path, start_scripted_server
) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    env = cli_env(tmp_path / "home")

    better, reports = gate(env, tmp_path, scripted.base_url, "good-model")
    assert better.returncode == 0, better.stdout + better.stderr
    assert "evalhub gate: PASS" in reports["md"].read_text()
    junit = ElementTree.parse(reports["xml"]).getroot()
    assert junit.get("failures") == "0" and int(junit.get("tests") or 0) >= 4
    document = json.loads(reports["json"].read_text())
    assert document["decision"] == "pass" and document["exit_code"] == 0
    candidate = document["runs"][0]["candidate"]
    assert candidate["metrics"]["exact_match"]["aggregate"]["value"] == 1.0
    assert len(candidate["results"]) == N_CASES

    equal, reports = gate(env, tmp_path, scripted.base_url, "same-model")
    assert equal.returncode == 0, equal.stdout + equal.stderr

    worse, reports = gate(env, tmp_path, scripted.base_url, "bad-model")
    assert worse.returncode == 1, worse.stdout + worse.stderr
    summary = reports["md"].read_text()
    assert "evalhub gate: REGRESSION" in summary and "Cases that regressed most" in summary
    junit = ElementTree.parse(reports["xml"]).getroot()
    assert int(junit.get("failures") or 0) >= 1
    # The baseline ran three times yet was generated once: later gates reuse its cache.
    assert scripted.calls == 4 * N_CASES

    bad_suite = tmp_path / "bad.yaml"
    bad_suite.write_text(SUITE.read_text().replace("name: chrf", "name: chrff"))
    (tmp_path / "capitals.jsonl").write_text((SUITE.parent / "capitals.jsonl").read_text())
    broken, _ = gate(env, tmp_path, scripted.base_url, "good-model", SUITE, bad_suite)
    assert broken.returncode == 2
    assert "bad.yaml:19: metrics.2: unknown metric 'chrff'" in broken.stderr


@pytest.fixture
def server(
    tmp_path: Path, start_scripted_server
) -> Iterator[tuple[dict[str, str], ScriptedServer]]:
    """`evalhub serve` whose registry models are served by the scripted server."""
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    env = cli_env(tmp_path / "home", EVALHUB_SERVING_URL=scripted.base_url)
    with child_server(tmp_path / "home", env) as child:
        assert child.token, child.tail()
        yield {**child.env, "EVALHUB_URL": child.url, "EVALHUB_TOKEN": child.token}, scripted


def test_eval_run_of_a_registry_model_runs_as_a_server_job(server, tmp_path: Path) -> None:
    env, scripted = server
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file(
        {"lm_head.weight": np.zeros((4, 4), np.float32)}, str(model_dir / "model.safetensors")
    )
    assert evalhub(env, "models", "create", "tiny", "--kind", "base").returncode == 0
    assert evalhub(env, "versions", "register", str(model_dir), "--model", "tiny").returncode == 0

    output = tmp_path / "run.json"
    ran = evalhub(env, "eval", "run", str(SUITE), "--model", "tiny", "--output", str(output))
    assert ran.returncode == 0, ran.stderr
    assert "queued evalrun-" in ran.stderr
    assert {body["model"] for body in scripted.requests} == {"tiny/1"}
    run_id = json.loads(output.read_text())["run_id"]
    shown = json.loads(evalhub(env, "eval", "show", run_id, "--json").stdout)
    assert shown["model_version"] == "tiny/1" and shown["job_id"].startswith("eval-")
    lineage = json.loads(evalhub(env, "versions", "lineage", "tiny/1", "--json").stdout)
    assert {(e["relation"], e["target_id"]) for e in lineage["downstream"]} == {
        ("evaluated_in", run_id)
    }
    listed = json.loads(evalhub(env, "eval", "list", "--json").stdout)
    assert [row["id"] for row in listed] == [run_id]

    viewer = evalhub(env, "token", "create", "--name", "v", "--role", "viewer").stdout.split()[-1]
    refused = evalhub(
        {**env, "EVALHUB_TOKEN": viewer}, "eval", "run", str(SUITE), "--model", "tiny"
    )
    assert refused.returncode == 1 and "editor" in refused.stderr
