"""Evaluation: suites, metrics, the runner with its generation cache, comparison, the gate."""

from __future__ import annotations

from evalhub.eval.cache import (
    GenerationCache,
    InMemoryCache,
    SQLiteCache,
    cache_key,
    generation_key,
)
from evalhub.eval.case import Case, Message, render_messages
from evalhub.eval.compare import CaseDelta, Comparison, MetricComparison, compare_runs
from evalhub.eval.gate import EXIT_CODES, GateCheck, GatePolicy, GateResult, SuiteGate, gate
from evalhub.eval.metrics import Metric, MetricError, create_metric, known_metrics, register_metric
from evalhub.eval.record import (
    SCHEMA_VERSION,
    Aggregate,
    CaseResult,
    EvalRun,
    GenerationRecord,
    MetricSummary,
    Score,
    SliceSummary,
    TargetInfo,
)
from evalhub.eval.report import junit_xml, markdown_summary, write_reports
from evalhub.eval.runner import (
    JsonlSink,
    Progress,
    ResultSink,
    RunOptions,
    Target,
    arun_suite,
    load_run,
    run_suite,
    save_run,
)
from evalhub.eval.scoring import score_run
from evalhub.eval.suite import (
    MetricSpec,
    Problem,
    SliceSpec,
    Suite,
    SuiteConfig,
    SuiteError,
    load_cases,
    load_suite,
)
from evalhub.sampling import SamplingParams

__all__ = [
    "EXIT_CODES",
    "SCHEMA_VERSION",
    "Aggregate",
    "Case",
    "CaseDelta",
    "CaseResult",
    "Comparison",
    "EvalRun",
    "GateCheck",
    "GatePolicy",
    "GateResult",
    "GenerationCache",
    "GenerationRecord",
    "InMemoryCache",
    "JsonlSink",
    "Message",
    "Metric",
    "MetricComparison",
    "MetricError",
    "MetricSpec",
    "MetricSummary",
    "Problem",
    "Progress",
    "ResultSink",
    "RunOptions",
    "SQLiteCache",
    "SamplingParams",
    "Score",
    "SliceSpec",
    "SliceSummary",
    "Suite",
    "SuiteConfig",
    "SuiteError",
    "SuiteGate",
    "Target",
    "TargetInfo",
    "arun_suite",
    "cache_key",
    "compare_runs",
    "create_metric",
    "gate",
    "generation_key",
    "junit_xml",
    "known_metrics",
    "load_cases",
    "load_run",
    "load_suite",
    "markdown_summary",
    "register_metric",
    "render_messages",
    "run_suite",
    "save_run",
    "score_run",
    "write_reports",
]
