from __future__ import annotations

import json
from pathlib import Path

from evalhub.finetune.data import format_report, validate_chat_file
from evalhub.finetune.tasks import upper_case_task, write_jsonl

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

# line number -> (line text, the error type it must produce)
BAD_LINES: dict[int, tuple[str, str]] = {
    2: ("{not json", "invalid_json"),
    3: ("[1, 2]", "data_type"),
    4: (json.dumps({"prompt": "x", "completion": "y"}), "missing_messages_list"),
    5: (json.dumps({**GOOD, "extra": 1}), "unrecognized_example_key"),
    6: (json.dumps({"messages": ["hi", GOOD["messages"][1]]}), "message_data_type"),
    7: (json.dumps({"messages": [{"content": "hi"}, GOOD["messages"][1]]}), "message_missing_key"),
    8: (
        json.dumps(
            {"messages": [{"role": "user", "content": "x", "mood": "ok"}, GOOD["messages"][1]]}
        ),
        "message_unrecognized_key",
    ),
    9: (
        json.dumps({"messages": [{"role": "bot", "content": "x"}, GOOD["messages"][1]]}),
        "unrecognized_role",
    ),
    10: (
        json.dumps({"messages": [{"role": "user", "content": 3}, GOOD["messages"][1]]}),
        "missing_content",
    ),
    11: (
        json.dumps(
            {"messages": [{"role": "user", "content": "x", "weight": 1}, GOOD["messages"][1]]}
        ),
        "invalid_weight",
    ),
    12: (
        json.dumps({"messages": [{"role": "user", "content": "x"}]}),
        "example_missing_assistant_message",
    ),
}


def test_each_error_type_is_reported_on_its_line(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD)] + [BAD_LINES[number][0] for number in sorted(BAD_LINES)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = validate_chat_file(path)
    assert not report.ok
    found = {(issue.line, issue.type) for issue in report.errors}
    for number, (_, error_type) in BAD_LINES.items():
        assert (number, error_type) in found, (number, error_type, report.errors)
    assert all(issue.line != 1 for issue in report.errors)
    assert report.error_counts["invalid_json"] == 1
    text = format_report(report)
    assert "FAILED" in text and "line 9: unrecognized_role" in text


def test_allowed_shapes_pass(tmp_path: Path) -> None:
    rows = [GOOD] * 8 + [
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "weather?", "name": "ann"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                {"role": "tool", "content": "sunny", "tool_call_id": "1"},
                {"role": "assistant", "content": "Sunny.", "weight": 1},
            ]
        },
        {"messages": [*GOOD["messages"], {"role": "assistant", "content": "again", "weight": 0}]},
    ]
    report = validate_chat_file(write_jsonl(tmp_path / "ok.jsonl", rows))
    assert report.ok, report.errors
    assert report.n_examples == 10


def test_too_few_examples(tmp_path: Path) -> None:
    report = validate_chat_file(write_jsonl(tmp_path / "few.jsonl", [GOOD] * 9))
    assert not report.ok
    assert [(issue.line, issue.type) for issue in report.errors] == [(None, "too_few_examples")]


def test_token_counts_and_long_examples_are_reported(tmp_path: Path, tiny_tokenizer) -> None:
    rows = upper_case_task(20, seed=0)
    rows[4] = {
        "messages": [
            {"role": "user", "content": "upper: " + "cat " * 40},
            {"role": "assistant", "content": "CAT " * 40},
        ]
    }
    report = validate_chat_file(
        write_jsonl(tmp_path / "t.jsonl", rows), tiny_tokenizer, max_tokens=64
    )
    assert report.ok
    assert [(issue.line, issue.type) for issue in report.warnings] == [(5, "too_long")]
    stats = report.token_stats
    assert stats is not None and stats.max > 64 > stats.min
    assert sum(bin.count for bin in report.histogram) == 20
    assert "tokens per example" in format_report(report)
