"""The README, run: every command and Python block of a section, in order, checked against the
output the README shows (tests/docs/readme.py says how). A newcomer's machine is stood in for by a
fresh HOME and working directory per section, with the checkout's `examples/` and `.vllm-venv`
beside it.

To refresh the README's output after a change, `DOCS_TEST_RECORD=FILE pytest tests/docs -k TITLE`
appends each step, what it printed and where it differs from the README to FILE, and goes on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.docs.readme import (
    ROOT,
    SKIP_REASONS,
    Mismatch,
    Section,
    Session,
    check,
    expected_status,
    parse,
    substitute,
    wait_for,
)

SECTIONS = parse()

COMMAND_TIMEOUT = 600.0
SERVER_TIMEOUT = 180.0


def _run() -> list[Section]:
    return [section for section in SECTIONS if section.steps]


def test_every_block_is_run_or_left_out_for_a_named_reason() -> None:
    for section in SECTIONS:
        for line, reason in section.skipped:
            assert reason in SKIP_REASONS, f"README.md:{line}: unknown reason to skip {reason!r}"


def _environment(home: Path) -> dict[str, str]:
    """The machine's environment with a fresh HOME, no EVALHUB_* setting, the checkout's venv."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EVALHUB_", "PYTEST_", "AWS_", "RAY_"))
    }
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"
    # The code paths the README's output was recorded on (readme.py says why).
    env["ATEN_CPU_CAPABILITY"] = "avx2"
    env["MKL_CBWR"] = "AVX2"
    env.pop("VIRTUAL_ENV", None)
    return env


def _record(command: str, printed: str, status: int) -> bool:
    """Append a step to DOCS_TEST_RECORD's file, if set: then a mismatch is recorded, not raised."""
    path = os.environ.get("DOCS_TEST_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as record:
            record.write(f"$ {command}\n{printed}\n# exit status {status}\n")
    return bool(path)


def run_section(section: Section, work: Path) -> None:
    home = work.parent / "home"
    home.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (work / ".vllm-venv").symlink_to(ROOT / ".vllm-venv")  # `make vllm`'s, where vLLM runs from
    session = Session(work, _environment(home))
    names = session.names
    used = section.used
    try:
        steps = section.steps
        for index, step in enumerate(steps):
            following = steps[index + 1] if index + 1 < len(steps) else None
            where = f"{step.name} ({section.title})"
            if step.kind == "file":
                (work / step.path).write_text(substitute(step.text, names), encoding="utf-8")
                continue
            if step.background:
                log = session.start_background(substitute(step.text, names))
                wait_for(log, step.expected, names, where, SERVER_TIMEOUT, used)
                continue
            if step.kind == "python":
                printed, status = session.python(
                    substitute(step.text, names), step.name, COMMAND_TIMEOUT
                )
                want: int | None = 0
            else:
                printed, status = session.shell(substitute(step.text, names), COMMAND_TIMEOUT)
                want = expected_status(step, following)
            if want is not None and status != want and not os.environ.get("DOCS_TEST_RECORD"):
                raise AssertionError(
                    f"{where}: {step.text!r} exited {status}, the README shows {want}:\n{printed}"
                )
            if _record(step.text, printed, status):
                try:
                    check(step.expected, printed, names, where, used)
                except Mismatch as mismatch:
                    _record("# MISMATCH", str(mismatch).splitlines()[1], -1)
                continue
            check(step.expected, printed, names, where, used)
    finally:
        session.close()


@pytest.mark.parametrize("section", _run(), ids=lambda section: section.title)
def test_readme_section(section: Section, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run_section(section, work)


# -- the checker itself: it must fail where the README and the output part ----------------------


def test_a_shown_line_must_be_printed_in_order_with_names_bound() -> None:
    names: dict[str, str] = {}
    printed = "created ftjob-0123456789abcdef01234567 (60 steps)\nloss 1.25 in 0:00:07\ndone"
    check(
        ["created ftjob-ffffffffffffffffffffffff (60 steps)", "...", "loss 2.5 in 0:00:05"],
        printed,
        names,
        "here",
    )
    assert names == {"ftjob-ffffffffffffffffffffffff": "ftjob-0123456789abcdef01234567"}
    assert substitute("evalhub finetune jobs show ftjob-ffffffffffffffffffffffff", names) == (
        "evalhub finetune jobs show ftjob-0123456789abcdef01234567"
    )
    with pytest.raises(Mismatch):  # a word changed
        check(["created ftjob-ffffffffffffffffffffffff (60 stepz)"], printed, {}, "here")
    with pytest.raises(Mismatch):  # out of order
        check(["done", "loss 1.25 in 0:00:07"], printed, {}, "here")
    steps = "step 50: run evalrun-111111111111111111111111\nstep 400: run evalrun-444444444444444444444444"
    bound: dict[str, str] = {}
    check(["step 400: run evalrun-aaaaaaaaaaaaaaaaaaaaaaaa"], steps, bound, "here")
    assert bound == {"evalrun-aaaaaaaaaaaaaaaaaaaaaaaa": "evalrun-444444444444444444444444"}
    picked = (
        "step 50: evalrun-111111111111111111111111\nstep 150: evalrun-222222222222222222222222 *"
    )
    shown = ["step 100: evalrun-aaaaaaaaaaaaaaaaaaaaaaaa *"]
    with pytest.raises(Mismatch):  # a later command uses the name: the step must be the one shown
        check(shown, picked, {}, "here", used={"evalrun-aaaaaaaaaaaaaaaaaaaaaaaa"})
    loose: dict[str, str] = {}  # nothing uses it: another CPU's pick will do
    check(shown, picked, loose, "here", used=set())
    assert loose == {"evalrun-aaaaaaaaaaaaaaaaaaaaaaaa": "evalrun-222222222222222222222222"}
    with pytest.raises(Mismatch):  # one shown name, two printed ones
        check(
            ["a evalrun-aaaaaaaaaaaaaaaaaaaaaaaa", "b evalrun-aaaaaaaaaaaaaaaaaaaaaaaa"],
            "a evalrun-111111111111111111111111\nb evalrun-222222222222222222222222",
            {},
            "here",
        )


def test_table_rules_and_padding_may_differ_in_width() -> None:
    check(
        ["┏━━━━━━┳━━━━┓", "│ exact_match │ 0.875   │"],
        "┏━━━━━━━━━━┳━━━━━━━━┓\n│ exact_match   │ 1 │",
        {},
        "here",
    )


def test_a_session_keeps_its_variables_status_and_python(tmp_path: Path) -> None:
    session = Session(tmp_path, _environment(tmp_path))
    try:
        assert session.shell("export GREETING=hello; false", 30)[1] == 1
        assert session.shell("echo $?", 30) == ("1", 0)
        assert session.python("import os\nprint(os.environ['GREETING'])", "x", 30) == ("hello", 0)
        assert session.python("x = 2", "y", 30)[1] == 0
        assert session.python("print(x * 21)", "z", 30) == ("42", 0)
        log = session.start_background("sleep 0.2 && echo ready && sleep 600")
        assert "ready" in wait_for(log, ["ready"], {}, "here", 30)
    finally:
        session.close()
