"""Suites: a YAML file naming a JSONL dataset, a prompt template, sampling and metrics.

Both files are versioned by the sha256 of their bytes, so a run records exactly what it used.
Every problem is reported with its file and line, and nothing runs until the suite is clean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evalhub.eval.case import Case, Message, render_messages
from evalhub.eval.metric_policy import LOCAL, MetricPolicy
from evalhub.sampling import SamplingParams
from registry import json_limits

MAX_PROBLEMS = 50

DatasetResolver = Callable[[str], Path]
"""Turns a registry dataset reference (`name`, `name/3`, `name@alias`) into a local JSONL path."""


#: A suite's sampling unless it says otherwise: greedy, reproducible, bounded.
SUITE_SAMPLING = {"temperature": 0.0, "max_tokens": 256, "seed": 0}


class MetricSpec(BaseModel):
    """A metric as a suite names it: registry name, options, pass threshold and weight."""

    model_config = ConfigDict(extra="forbid")

    name: str
    id: str | None = Field(default=None, description="Result key; defaults to the name.")
    options: dict[str, Any] = Field(default_factory=dict)
    threshold: float | None = None
    weight: float = Field(default=1.0, ge=0.0)

    @property
    def key(self) -> str:
        return self.id or self.name


class SliceSpec(BaseModel):
    """A named subset of cases, chosen by tags."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tags: list[str] = Field(min_length=1)
    match: Literal["any", "all"] = "any"

    def contains(self, case_tags: list[str]) -> bool:
        present = set(case_tags)
        wanted = set(self.tags)
        return wanted <= present if self.match == "all" else bool(wanted & present)


class SuiteConfig(BaseModel):
    """The YAML file's content."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    version: str
    description: str = ""
    dataset: str = Field(min_length=1)
    prompt: list[Message] | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(**SUITE_SAMPLING))
    metrics: list[MetricSpec] = Field(min_length=1)
    repeats: int = Field(default=1, ge=1)
    slices: list[SliceSpec] = Field(default_factory=list)

    @field_validator("sampling", mode="before")
    @classmethod
    def _suite_defaults(cls, value: Any) -> Any:
        return {**SUITE_SAMPLING, **value} if isinstance(value, dict) else value

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_string(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_shorthand(cls, value: Any) -> Any:
        # `- exact_match` is shorthand for `- name: exact_match`.
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


class Problem(BaseModel):
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


class SuiteError(ValueError):
    """A suite or dataset that cannot run; carries every problem found, each with file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class Suite(BaseModel):
    """A loaded, validated suite with its cases and the digests that version it."""

    config: SuiteConfig
    path: Path
    digest: str
    dataset_ref: str
    dataset_path: Path
    dataset_digest: str
    cases: list[Case]
    metric_policy: MetricPolicy = Field(default=LOCAL, exclude=True)

    @property
    def name(self) -> str:
        return self.config.name

    def messages_for(self, case: Case) -> list[dict[str, Any]]:
        return render_messages(case, self.config.prompt, self.config.vars)

    def build_metrics(self, runtime: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Metric objects by result key; `runtime` adds options never saved (keys, caches)."""
        return {
            spec.key: _build_metric(spec, runtime or {}, self.metric_policy)
            for spec in self.config.metrics
        }


def _build_metric(
    spec: MetricSpec, runtime: dict[str, dict[str, Any]], policy: MetricPolicy
) -> Any:
    """Runtime options (keys, caches, settings' defaults) fill in what the suite leaves out."""
    from evalhub.eval.metrics import create_metric

    options = {**runtime.get(spec.name, {}), **spec.options}
    return create_metric(spec.name, policy=policy, **options)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest YAML node that `loc` (a pydantic error location) reaches."""
    if root is None:
        return None
    node = root
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child = value_node
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def is_file_reference(reference: str) -> bool:
    """A suite's dataset is a file beside it when it looks like one; else a registry reference."""
    return reference.endswith((".jsonl", ".json")) or reference.startswith((".", "/"))


def load_suite(
    path: str | Path,
    resolve_dataset: DatasetResolver | None = None,
    *,
    metric_runtime: dict[str, dict[str, Any]] | None = None,
    metric_policy: MetricPolicy = LOCAL,
) -> Suite:
    """Load and validate a suite YAML and its dataset; raise SuiteError listing every problem.

    `metric_runtime` is what the run will pass to `build_metrics` (e.g. a judge endpoint or a
    price table from settings), so that metrics relying on it validate here too.
    `metric_policy` limits which metrics the suite may name (a suite sent to the server).
    """
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SuiteError([Problem(file=file, line=None, message=str(error))]) from error
    try:
        text = raw.decode("utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise SuiteError([Problem(file=file, line=None, message=f"not UTF-8: {error}")]) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise SuiteError([Problem(file=file, line=line, message=f"bad YAML: {problem}")]) from error
    if not isinstance(data, dict):
        raise SuiteError([Problem(file=file, line=1, message="a suite is a YAML mapping")])
    try:
        config = SuiteConfig.model_validate(data)
    except ValidationError as error:
        problems = [
            Problem(
                file=file,
                line=_node_line(root, tuple(item["loc"])),
                message=f"{_format_loc(tuple(item['loc']))}: {item['msg']}",
            )
            for item in error.errors()
        ]
        raise SuiteError(problems) from error

    problems = _check_metrics(config, root, file, metric_runtime or {}, metric_policy)
    dataset_path: Path | None = None
    dataset_line = _node_line(root, ("dataset",))
    if is_file_reference(config.dataset):
        dataset_path = (path.parent / config.dataset).resolve()
    elif resolve_dataset is None:
        problems.append(
            Problem(
                file=file,
                line=dataset_line,
                message=f"dataset {config.dataset!r} is a registry reference and no resolver "
                "was given; pass resolve_dataset, or name a .jsonl file relative to the suite",
            )
        )
    else:
        try:
            dataset_path = Path(resolve_dataset(config.dataset))
        except Exception as error:
            problems.append(
                Problem(
                    file=file,
                    line=dataset_line,
                    message=f"dataset {config.dataset!r} could not be resolved: {error}",
                )
            )
    if dataset_path is not None and not dataset_path.is_file():
        problems.append(
            Problem(file=file, line=dataset_line, message=f"dataset file {dataset_path} not found")
        )
        dataset_path = None
    cases: list[Case] = []
    dataset_digest = ""
    if dataset_path is not None:
        try:
            cases, dataset_digest = load_cases(dataset_path)
        except SuiteError as error:
            problems.extend(error.problems)
        else:
            problems.extend(_check_templates(config, cases, dataset_path))
    if problems:
        raise SuiteError(problems[:MAX_PROBLEMS])
    assert dataset_path is not None
    return Suite(
        config=config,
        path=path.resolve(),
        digest=sha256_bytes(raw),
        dataset_ref=config.dataset,
        dataset_path=dataset_path,
        dataset_digest=dataset_digest,
        cases=cases,
        metric_policy=metric_policy,
    )


def _check_metrics(
    config: SuiteConfig,
    root: yaml.Node | None,
    file: str,
    runtime: dict[str, dict[str, Any]],
    policy: MetricPolicy,
) -> list[Problem]:
    """Build every metric once so that unknown names and bad options fail before anything runs."""
    from evalhub.eval.metrics import MetricError

    problems: list[Problem] = []
    seen: set[str] = set()
    for index, spec in enumerate(config.metrics):
        line = _node_line(root, ("metrics", index))
        if spec.key in seen:
            message = f"metrics.{index}: duplicate metric key {spec.key!r}; give one an `id`"
            problems.append(Problem(file=file, line=line, message=message))
        seen.add(spec.key)
        try:
            _build_metric(spec, runtime, policy)
        except MetricError as error:
            problems.append(Problem(file=file, line=line, message=f"metrics.{index}: {error}"))
    return problems


def _check_templates(config: SuiteConfig, cases: list[Case], dataset: Path) -> list[Problem]:
    problems: list[Problem] = []
    for case in cases:
        try:
            render_messages(case, config.prompt, config.vars)
        except KeyError as error:
            problems.append(
                Problem(file=str(dataset), line=None, message=f"case {case.id!r}: {error.args[0]}")
            )
    return problems


def load_cases(path: str | Path) -> tuple[list[Case], str]:
    """Parse a JSONL dataset; returns the cases and the sha256 of the file's bytes."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    path = Path(path)
    file = str(path)
    raw = path.read_bytes()
    problems: list[Problem] = []
    cases: list[Case] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json_limits.loads(line)
        except ValueError as error:
            message = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            problems.append(Problem(file=file, line=number, message=f"bad JSON: {message}"))
            continue
        if not isinstance(data, dict):
            problems.append(Problem(file=file, line=number, message="a case is a JSON object"))
            continue
        try:
            case = Case.model_validate(data)
        except ValidationError as error:
            for item in error.errors():
                where = f"{_format_loc(tuple(item['loc']))}: " if item["loc"] else ""
                problems.append(Problem(file=file, line=number, message=f"{where}{item['msg']}"))
            continue
        if case.id in first_line:
            message = f"duplicate id {case.id!r} (first on line {first_line[case.id]})"
            problems.append(Problem(file=file, line=number, message=message))
            continue
        if case.schema_ is not None:
            try:
                Draft202012Validator.check_schema(case.schema_)
            except SchemaError as error:
                message = f"schema is not valid JSON Schema: {error.message}"
                problems.append(Problem(file=file, line=number, message=message))
                continue
        first_line[case.id] = number
        cases.append(case)
        if len(problems) >= MAX_PROBLEMS:
            break
    if not cases and not problems:
        problems.append(Problem(file=file, line=None, message="the dataset has no cases"))
    if problems:
        raise SuiteError(problems[:MAX_PROBLEMS])
    return cases, sha256_bytes(raw)
