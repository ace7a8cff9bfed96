"""Gate reports: JUnit XML for CI test panels and Markdown for pull-request comments.

JSON needs no code here: `GateResult.model_dump_json()` and `EvalRun.model_dump_json()`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from evalhub.eval.compare import MetricComparison
from evalhub.eval.gate import GateResult

_PREVIEW_CHARS = 400


def junit_xml(result: GateResult) -> str:
    """One testcase per suite x metric; a failed threshold or regression check is a failure."""
    root = ElementTree.Element("testsuites", name="evalhub gate")
    total = failures = 0
    for suite in result.suites:
        element = ElementTree.SubElement(root, "testsuite", name=suite.suite)
        metrics: dict[str, list] = {}
        for check in suite.checks:
            metrics.setdefault(check.metric, []).append(check)
        if suite.comparison is not None:
            for name in suite.comparison.metrics:
                metrics.setdefault(name, [])
        suite_failures = 0
        if suite.error:
            case = ElementTree.SubElement(element, "testcase", classname=suite.suite, name="run")
            ElementTree.SubElement(case, "error", message=suite.error).text = suite.error
            suite_failures += 1
        for name, checks in metrics.items():
            case = ElementTree.SubElement(element, "testcase", classname=suite.suite, name=name)
            failed = [check for check in checks if not check.passed]
            if failed:
                message = "; ".join(check.message for check in failed)
                failure = ElementTree.SubElement(
                    case, "failure", message=message, type="/".join(c.kind for c in failed)
                )
                failure.text = "\n".join(check.message for check in checks)
                suite_failures += 1
            elif checks:
                output = ElementTree.SubElement(case, "system-out")
                output.text = "\n".join(check.message for check in checks)
        count = len(metrics) + (1 if suite.error else 0)
        element.set("tests", str(count))
        element.set("failures", str(suite_failures))
        total += count
        failures += suite_failures
    root.set("tests", str(total))
    root.set("failures", str(failures))
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _row(name: str, metric: MetricComparison, status: str) -> str:
    ci = f"[{_number(metric.ci_low)}, {_number(metric.ci_high)}]"
    difference = "-" if metric.difference is None else f"{metric.difference:+.4g}"
    p_value = "-" if metric.p_value is None else f"{metric.p_value:.3g}"
    return (
        f"| {name} | {_number(metric.baseline_mean)} | {_number(metric.candidate_mean)} | "
        f"{difference} | {ci} | {p_value} | {metric.wins}/{metric.ties}/{metric.losses} | "
        f"{status} |"
    )


def _preview(text: str) -> str:
    text = text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"
    return text.replace("```", "` ` `")


def markdown_summary(result: GateResult) -> str:
    """A summary that reads well as a pull-request comment."""
    icon = {"pass": "✅", "regression": "❌", "error": "⚠️"}[result.decision]
    lines = [f"## {icon} evalhub gate: {result.decision.upper()}", ""]
    if result.decision != "pass":
        lines += [f"- {reason}" for reason in result.reasons] + [""]
    for suite in result.suites:
        lines.append(f"### {suite.suite}")
        if suite.error:
            lines += [f"Error: {suite.error}", ""]
            continue
        failed = {(c.metric, c.kind) for c in suite.checks if not c.passed}
        comparison = suite.comparison
        if comparison is None:
            lines += ["| metric | check | status |", "|---|---|---|"]
            for check in suite.checks:
                lines.append(
                    f"| {check.metric} | {check.message} | {'pass' if check.passed else 'FAIL'} |"
                )
            lines.append("")
            continue
        pct = round(comparison.confidence * 100)
        lines += [
            f"{comparison.shared_cases} shared cases; baseline `{comparison.baseline_run_id}`, "
            f"candidate `{comparison.candidate_run_id}`.",
            "",
            f"| metric | baseline | candidate | change | {pct}% CI | p | W/T/L | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, metric in comparison.metrics.items():
            problems = [kind for (metric_name, kind) in failed if metric_name == name]
            status = "FAIL: " + ", ".join(sorted(problems)) if problems else "pass"
            lines.append(_row(name, metric, status))
        lines += [f"- {note}" for note in comparison.notes]
        lines += [f"- {warning}" for warning in comparison.warnings]
        lines.append("")
        if comparison.regressions:
            lines += ["<details><summary>Cases that regressed most</summary>", ""]
            for delta in comparison.regressions:
                lines += [
                    f"**{delta.case_id}** ({delta.metric}: {delta.baseline_value:.4g} → "
                    f"{delta.candidate_value:.4g})",
                    "",
                    "| baseline | candidate |",
                    "|---|---|",
                    f"| {_cell(delta.baseline_output)} | {_cell(delta.candidate_output)} |",
                    "",
                ]
            lines += ["</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return _preview(text).replace("|", "\\|").replace("\n", "<br>")


def write_reports(
    result: GateResult,
    *,
    junit_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    json_path: str | Path | None = None,
) -> None:
    if junit_path is not None:
        Path(junit_path).write_text(junit_xml(result), encoding="utf-8")
    if markdown_path is not None:
        Path(markdown_path).write_text(markdown_summary(result), encoding="utf-8")
    if json_path is not None:
        Path(json_path).write_text(result.model_dump_json(indent=2), encoding="utf-8")
