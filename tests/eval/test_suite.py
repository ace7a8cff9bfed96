from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from evalhub.eval import SuiteError, load_cases, load_suite
from tests.eval.conftest import write_suite

GOOD = """\
name: qa
version: 2
dataset: cases.jsonl
prompt:
  - role: system
    content: "Answer in {lang}. Reply as JSON like {{\\"a\\": 1}}."
  - role: user
    content: "{input}"
vars: {lang: English}
sampling: {temperature: 0.0, max_tokens: 32, seed: 7}
metrics:
  - exact_match
  - name: rougeL
    options: {use_stemmer: true}
    threshold: 0.5
    weight: 2
repeats: 2
slices:
  - {name: math, tags: [math]}
"""

CASES = [
    {"id": 1, "input": "2+2?", "expected": "4", "tags": ["math"]},
    {"id": "b", "input": "capital of France?", "expected": "Paris", "vars": {"lang": "French"}},
    {"id": "c", "messages": [{"role": "user", "content": "hi {input}"}], "expected": "hello"},
]


def test_loads_a_suite_with_digests_and_rendered_prompts(tmp_path: Path) -> None:
    path = write_suite(tmp_path, GOOD, CASES)
    suite = load_suite(path)
    assert suite.name == "qa" and suite.config.version == "2" and suite.config.repeats == 2
    assert suite.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    dataset_bytes = (tmp_path / "cases.jsonl").read_bytes()
    assert suite.dataset_digest == hashlib.sha256(dataset_bytes).hexdigest()
    assert [case.id for case in suite.cases] == ["1", "b", "c"]
    first = suite.messages_for(suite.cases[0])
    assert first == [
        {"role": "system", "content": 'Answer in English. Reply as JSON like {"a": 1}.'},
        {"role": "user", "content": "2+2?"},
    ]
    assert suite.messages_for(suite.cases[1])[0]["content"].startswith("Answer in French.")
    # A case's own messages are sent as written.
    assert suite.messages_for(suite.cases[2]) == [{"role": "user", "content": "hi {input}"}]
    metrics = suite.build_metrics()
    assert list(metrics) == ["exact_match", "rougeL"] and metrics["rougeL"].options == {
        "use_stemmer": True
    }


def test_registry_dataset_reference_goes_through_the_resolver(tmp_path: Path) -> None:
    path = write_suite(tmp_path, GOOD.replace("cases.jsonl", "qa-data/3"), CASES)
    with pytest.raises(SuiteError, match="registry reference"):
        load_suite(path)
    asked = []

    def resolve(reference: str) -> Path:
        asked.append(reference)
        return tmp_path / "cases.jsonl"

    suite = load_suite(path, resolve_dataset=resolve)
    assert asked == ["qa-data/3"] and suite.dataset_ref == "qa-data/3" and len(suite.cases) == 3


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SuiteError) as error:
        load_suite(path)
    return [str(problem) for problem in error.value.problems]


def test_validation_errors_carry_file_and_line(tmp_path: Path) -> None:
    bad = GOOD.replace("threshold: 0.5", "threshold: high").replace("repeats: 2", "repeats: 0")
    path = write_suite(tmp_path, bad, CASES)
    problems = problems_of(path)
    assert f"{path}:15: metrics.1.threshold: Input should be a valid number" in problems[0]
    assert any(p.startswith(f"{path}:17: repeats") for p in problems)


def test_yaml_syntax_error_carries_the_line(tmp_path: Path) -> None:
    path = write_suite(tmp_path, GOOD.replace("repeats: 2", "repeats: [2"), CASES)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "bad YAML" in problem


def test_unknown_metric_in_a_suite_lists_known_ones(tmp_path: Path) -> None:
    path = write_suite(tmp_path, GOOD.replace("  - exact_match", "  - exact_mtach"), CASES)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:12: metrics.0: unknown metric 'exact_mtach'")
    assert "exact_match" in problem and "semantic_similarity" in problem


def test_bad_metric_options_and_unknown_placeholders(tmp_path: Path) -> None:
    suite = GOOD.replace("use_stemmer: true", "stemmer: true").replace("{input}", "{question}")
    problems = problems_of(write_suite(tmp_path, suite, CASES))
    assert any(":13: metrics.1: metric 'rougeL'" in p and "stemmer" in p for p in problems)
    assert any("placeholder {question} has no value" in p for p in problems)


def test_jsonl_problems_carry_file_and_line(tmp_path: Path) -> None:
    lines = "\n".join(
        [
            '{"id": "a", "input": "x", "expected": "y"}',
            '{"id": "b", "input": "x", "expected": ',
            '{"id": "c", "expected": "y"}',
            '{"id": "a", "input": "again"}',
            "",
            '{"id": "e", "input": "x", "tags": "not-a-list"}',
            '{"id": "f", "input": "x", "schema": {"type": 12}}',
        ]
    )
    path = write_suite(tmp_path, GOOD, lines)
    problems = problems_of(path)
    dataset = tmp_path / "cases.jsonl"
    assert problems[0].startswith(f"{dataset}:2: bad JSON")
    assert problems[1] == f"{dataset}:3: Value error, a case needs `messages` or `input`"
    assert problems[2] == f"{dataset}:4: duplicate id 'a' (first on line 1)"
    assert problems[3].startswith(f"{dataset}:6: tags: Input should be a valid list")
    assert problems[4].startswith(f"{dataset}:7: schema is not valid JSON Schema")


def test_load_cases_alone(tmp_path: Path) -> None:
    write_suite(tmp_path, GOOD, CASES)
    cases, digest = load_cases(tmp_path / "cases.jsonl")
    assert len(cases) == 3 and len(digest) == 64
    assert cases[0].expected_text == "4"
