"""The README as a script: its blocks parsed into steps, run in a shell, checked against its text.

A section of the README (a `##` or `###` heading) is one session: a fresh working directory and
HOME, one bash that keeps its variables from command to command, and one Python interpreter for
its Python blocks. In a `console` block, `$ ` starts a command (continued by a trailing `\\` or by
`> ` lines, as a shell's second prompt shows them); the lines after it are what it printed. A
`bash` block is commands without output. A `yaml` block whose first line is `# NAME` is the file
NAME, written before the next command. A `console` block's lines before its first `$` are what the
Python block before it printed.

What the README shows is checked line by line, in order (a shown line may skip printed lines; `…`
and `...` stand for lines left out). Names the run mints (`evalrun-…`, `ftjob-…`, tokens) are bound
on first sight and substituted into later commands and code; numbers (scores, losses, timings,
sizes), digests, timestamps and job workers' ids may differ, except the whole numbers of a line
that binds a name (a name no later command uses may bind on a line with other ones: another CPU's
run may pick another checkpoint); every other character must match, apart from the width of table
rules and padding. The docs test pins torch's and MKL's code paths to AVX2 (`ATEN_CPU_CAPABILITY`,
`MKL_CBWR`), those the README's output was recorded on: other paths round sums differently, and the
training the README shows then scores and picks other checkpoints.

An HTML comment `<!-- docs-test: skip REASON -->` right before a block leaves it out; only the
reasons in SKIP_REASONS are accepted. `<!-- docs-test: continues -->` in a section's text makes
it go on in the session of the section before it (its servers, files and variables).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Why a block may be left out; nothing else is.
SKIP_REASONS = {
    "gpu": "needs an NVIDIA GPU, which CI does not have",
    "make": "the README's set-up commands: `make test` is what CI runs, and tests/test_demo.py "
    "runs the demo's loop",
}

_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<verb>\w+)\s*(?P<arg>[^>]*?)\s*-->")
_HEADING = re.compile(r"^(#{2,3}) (.+)$")
_FILE_NAME = re.compile(r"# ([\w./-]+\.ya?ml)(?:\s|$)")


@dataclass
class Step:
    """One thing to do: a command, Python code, or a file to write; with what it must print."""

    kind: str  # "shell" | "python" | "file"
    text: str
    line: int  # where it starts in the README
    expected: list[str] = field(default_factory=list)
    background: bool = False
    path: str = ""  # a file step's name

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


@dataclass
class Section:
    title: str
    line: int
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    # `<!-- docs-test: continues -->` in a section's text: it goes on in the session before it.
    continues: bool = False

    @property
    def used(self) -> set[str]:
        """The minted names that its commands, code and files use (its output only shows them)."""
        return {name for step in self.steps for name in re.findall(_ID, step.text)}


def _console_steps(lines: list[str], first_line: int, steps: list[Step]) -> None:
    """Commands and their output; leading output belongs to the step before (a Python block)."""
    index = 0
    while index < len(lines) and not lines[index].startswith("$ "):
        if steps:
            steps[-1].expected.append(lines[index])
        index += 1
    while index < len(lines):
        start = index
        command = [lines[index][2:]]
        index += 1
        while index < len(lines) and (command[-1].endswith("\\") or lines[index].startswith("> ")):
            line = lines[index]
            command.append(line[2:] if line.startswith("> ") else line)
            index += 1
        text = "\n".join(command)
        step = Step("shell", text, first_line + start)
        # `CMD &` starts a server: its output is awaited in its log, then the session goes on.
        if text.rstrip().endswith(" &") and "\n" not in text:
            step.text = text.rstrip()[:-2]
            step.background = True
        while index < len(lines) and not lines[index].startswith("$ "):
            step.expected.append(lines[index])
            index += 1
        steps.append(step)


def parse(path: Path = README) -> list[Section]:
    """The README's sections with their steps, in order."""
    sections: list[Section] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    directive: tuple[str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        heading = _HEADING.match(line)
        if heading:
            sections.append(Section(heading.group(2), index + 1))
        found = _DIRECTIVE.search(line)
        if found and found.group("verb") == "continues":
            sections[-1].continues = True
            found = None
        elif found:
            directive = (found.group("verb"), found.group("arg"))
        if not line.startswith("```"):
            if line.strip() and not found:
                directive = None
            index += 1
            continue
        language = line[3:].strip()
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        body = lines[index + 1 : end]
        first = index + 2  # the README line of body[0]
        section = sections[-1]
        if directive and directive[0] == "skip":
            if language in ("console", "bash", "python"):
                section.skipped.append((index + 1, directive[1]))
        elif language == "console":
            _console_steps(body, first, section.steps)
        elif language == "bash":
            for offset, text in enumerate(body):
                if text.strip() and not text.lstrip().startswith("#"):
                    section.steps.append(Step("shell", text, first + offset))
        elif language == "python":
            section.steps.append(Step("python", "\n".join(body), first))
        elif language == "yaml" and body and (named := _FILE_NAME.match(body[0])):
            section.steps.append(Step("file", "\n".join(body) + "\n", first, path=named[1]))
        directive = None
        index = end + 1
    merged: list[Section] = []
    for section in sections:
        if not (section.steps or section.skipped):
            continue
        if section.continues and merged:
            merged[-1].steps += section.steps
            merged[-1].skipped += section.skipped
        else:
            merged.append(section)
    return merged


# -- matching what was printed against what the README shows ----------------------------------

# Minted names: evalrun-, ftjob-, file-... (24 hex digits), req- (32), drift- (16); tokens.
_ID = r"(?:[a-z]+-(?:[0-9a-f]{32}|[0-9a-f]{24}|[0-9a-f]{16})(?![0-9a-f])|ehk_[A-Za-z0-9_-]{20,})"
# A job worker's id: host, process and thread ("vm:29154:7f79060e1710").
_WORKER = r"[A-Za-z][\w.-]*:\d+:[0-9a-f]{6,16}"
# What may differ from run to run, each matched by its own class in the printed line.
_VARIABLE = re.compile(
    r"(?P<id>" + _ID + r")"
    r"|(?P<digest>sha256:[0-9a-f]{4,}…?)"
    r"|(?P<time>\d{4}-\d\d-\d\dT[\d:.]+Z?|\d+:\d\d:\d\d(?:,\d+)?)"
    r"|(?P<worker>" + _WORKER + r")"
    r"|(?P<number>[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
)
_CLASS = {
    "id": _ID,
    "digest": r"sha256:[0-9a-f]{4,}…?",
    "time": r"\d{4}-\d\d-\d\dT[\d:.]+Z?|\d+:\d\d:\d\d(?:,\d+)?",
    "worker": _WORKER,
    "number": r"[-+]?(?:\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf)",
}
_RULE = re.compile(r"([━─═])\1+")
_ELLIPSIS = {"...", "…"}


def normalize(line: str) -> str:
    """Table rules and runs of spaces at any width, no trailing space."""
    line = _RULE.sub(r"\1", line.replace("\u2009", " "))
    return re.sub(r"\s+", " ", line).strip()


def _pattern(
    expected: str, names: dict[str, str], pinned: bool
) -> tuple[re.Pattern[str], list[tuple[int, str]]]:
    """A regex for a shown line, and which of its groups are minted names.

    A line that first shows a name binds it, so it must be the right line: there, when
    `pinned`, whole numbers (a step, a trial, a count) must be the ones shown; elsewhere any
    number will do.
    """
    text = normalize(expected)
    found_all = list(_VARIABLE.finditer(text))
    binding = pinned and any(m.lastgroup == "id" and m.group() not in names for m in found_all)
    parts: list[str] = []
    binds: list[tuple[int, str]] = []
    position = 0
    for group, found in enumerate(found_all, start=1):
        parts.append(_literal(text[position : found.start()]))
        kind = found.lastgroup or "number"
        if kind == "id" and found.group() in names:
            parts.append(f"({re.escape(names[found.group()])})")
        elif kind == "number" and binding and re.fullmatch(r"[-+]?\d+", found.group()):
            parts.append(f"({re.escape(found.group())})")
        else:
            parts.append(f"({_CLASS[kind]})")
        if kind == "id":
            binds.append((group, found.group()))
        position = found.end()
    parts.append(_literal(text[position:]))
    return re.compile("".join(parts)), binds


def _literal(text: str) -> str:
    """Literal text with `…` and ` ...` inside a line standing for anything left out."""
    pieces = re.split(r"(…|\.\.\.)", text)
    return "".join(".*?" if piece in _ELLIPSIS else re.escape(piece) for piece in pieces)


class Mismatch(AssertionError):
    pass


def check(
    expected: list[str],
    printed: str,
    names: dict[str, str],
    where: str,
    used: Collection[str] | None = None,
) -> None:
    """Each shown line matches a printed line, in order; binds the names the run minted."""
    lines = [normalize(line) for line in printed.splitlines()]
    position = 0
    for shown in expected:
        if not shown.strip() or shown.strip() in _ELLIPSIS:
            continue
        shown_text = re.sub(r"\s+#\s*exit status \d+\s*$", "", shown)
        new = set(re.findall(_ID, shown_text)) - set(names)
        found_at = _find(lines, position, shown_text, names, pinned=True)
        if found_at is None and new and used is not None and not new & set(used):
            # Nothing uses these names: the line may bind them with other whole numbers (a run
            # on another CPU can select another checkpoint; nothing downstream depends on it).
            found_at = _find(lines, position, shown_text, names, pinned=False)
        if found_at is not None:
            position = found_at + 1
        else:
            raise Mismatch(
                f"{where}: the README shows\n    {shown}\nbut no line printed after the last "
                f"match is like it. Printed:\n" + printed
            )


def _find(
    lines: list[str], start: int, shown: str, names: dict[str, str], pinned: bool
) -> int | None:
    """The first line from `start` like the shown one (binding its new names), or None."""
    pattern, binds = _pattern(shown, names, pinned)
    for index in range(start, len(lines)):
        found = pattern.fullmatch(lines[index])
        bound = {name: found.group(group) for group, name in binds} if found else {}
        if found and all(names.get(name, value) == value for name, value in bound.items()):
            names.update(bound)
            return index
    return None


def substitute(text: str, names: dict[str, str]) -> str:
    """The README's minted names replaced by this run's."""
    for shown, actual in names.items():
        text = text.replace(shown, actual)
    return text


def expected_status(step: Step, following: Step | None) -> int | None:
    """The exit status the README shows for a command (None: any), 0 unless it shows otherwise."""
    for line in [step.text, *step.expected]:
        found = re.search(r"#\s*exit status (\d+)\s*$", line)
        if found:
            return int(found.group(1))
    if following is not None and following.text.strip() == "echo $?":
        return int(following.expected[0]) if following.expected else None
    if any(line.startswith("error:") for line in step.expected):
        return None
    return 0


# -- running a session --------------------------------------------------------------------------

_END = "__DOCS_TEST_END__"

_DRIVER = r"""
import contextlib, json, os, sys, traceback
scope = {"__name__": "__main__"}
for line in sys.stdin:
    request = json.loads(line)
    os.environ.clear(); os.environ.update(request["env"]); os.chdir(request["cwd"])
    status = 0
    try:
        exec(compile(request["code"], request["name"], "exec"), scope)
    except BaseException:
        traceback.print_exc(file=sys.stdout)
        status = 1
    sys.stdout.flush(); sys.stderr.flush()
    print("\n__DOCS_TEST_END__", status, flush=True)
"""


class _Process:
    """A child in its own process group whose output lines a thread collects."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put("")

    def send(self, text: str, timeout: float, what: str) -> tuple[str, int]:
        """Write a request; what it printed up to the end marker, and the status there."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()
        printed: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{what!r} ran past {timeout:.0f} s; it printed:\n" + "".join(printed)
                ) from None
            if line == "":
                raise RuntimeError(f"the session ended during {what!r}:\n" + "".join(printed))
            if line.startswith(_END):
                text = "".join(printed)
                return text.rstrip("\n"), int(line.split()[1])
            printed.append(line)

    def stop(self) -> None:
        """TERM to the whole group (servers it started too), KILL after 10 s."""
        group = self.popen.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        # The leader stays a zombie, and its group alive, until it is reaped: poll reaps it.
        while time.monotonic() < deadline and (self.popen.poll() is None or _group_alive(group)):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.popen.wait(timeout=10)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class Session:
    """One bash and one Python for a section, in its own directory and HOME."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.names: dict[str, str] = {}
        self._shell = _Process(["bash", "--norc", "--noprofile"], work, env)
        self._python: _Process | None = None
        self._background = 0

    def shell(self, command: str, timeout: float) -> tuple[str, int]:
        """Run a command in the session's bash: what it printed, and its exit status."""
        wrapped = (
            f"{{\n{command}\n}} </dev/null\n__rc=$?; printf '\\n{_END} %s\\n' $__rc; (exit $__rc)\n"
        )
        return self._shell.send(wrapped, timeout, command)

    def start_background(self, command: str) -> Path:
        """Start a server; its output goes to a log the caller waits on."""
        self._background += 1
        log = self.work / f".docs-test-background-{self._background}.log"
        self.shell(f"( {command} ) > {log} 2>&1 &", timeout=30)
        return log

    def python(self, code: str, name: str, timeout: float) -> tuple[str, int]:
        """Run a Python block in the session's interpreter, with the shell's variables."""
        self.shell("env -0 > .docs-test-env", timeout=30)
        raw = (self.work / ".docs-test-env").read_bytes().decode().split("\0")
        env = dict(item.split("=", 1) for item in raw if "=" in item)
        if self._python is None:
            self._python = _Process([sys.executable, "-u", "-c", _DRIVER], self.work, self.env)
        request = {"code": code, "name": name, "env": env, "cwd": str(self.work)}
        return self._python.send(json.dumps(request) + "\n", timeout, name)

    def close(self) -> None:
        for process in (self._shell, self._python):
            if process is not None:
                process.stop()


def wait_for(
    log: Path,
    expected: list[str],
    names: dict[str, str],
    where: str,
    timeout: float,
    used: Collection[str] | None = None,
) -> str:
    """What a background command printed, once it shows all the README shows (or its timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        printed = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        try:
            check(expected, printed, names, where, used)
            return printed
        except Mismatch:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def steps_of(sections: list[Section]) -> Iterator[tuple[Section, Step]]:
    for section in sections:
        for step in section.steps:
            yield section, step
