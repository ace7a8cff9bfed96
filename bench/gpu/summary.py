"""The tables at the end of a GPU benchmark run, from $OUT/{env,finetune,serving}.json.

  python bench/gpu/summary.py [--parts FILE]   # prints the tables and writes $OUT/summary.txt

FILE holds run.sh's lines "part<TAB>status<TAB>seconds<TAB>detail", shown first.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gpubench
from gpubench import gib

# The share of full fine-tuning's memory users know for each method (for a 7B-class model).
KNOWN_RANGES = {
    "full": "100%",
    "lora": "5-15%",
    "lora-bf16": "5-15%",
    "qlora": "3-8%",
    "dora": "5-15%",
    "galore": "20-40%",
}


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain-text columns: numbers right-aligned, words (and the first column) left-aligned."""
    columns = list(zip(headers, *rows, strict=True))
    widths = [max(len(cell) for cell in column) for column in columns]
    right = [
        i > 0 and all(is_number(cell) for cell in column[1:]) for i, column in enumerate(columns)
    ]

    def line(cells: list[str]) -> str:
        padded = (
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(cells, widths, right, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join(line(row) for row in [headers, ["-" * width for width in widths], *rows])


def is_number(cell: str) -> bool:
    """'1,234', '0.42', '15%', '1.02x', '5-15%' and '-' (no value) count as numbers."""
    return (
        cell == "-" or cell.strip("%x").replace(",", "").replace(".", "").replace("-", "").isdigit()
    )


def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def finetune_section(payload: dict[str, Any]) -> str:
    profile = payload.get("profile", {})
    runs: list[dict[str, Any]] = payload.get("runs", [])
    full_peak = {
        run["framework"]: run.get("peak_memory_bytes")
        for run in runs
        if run["method"] == "full" and run["status"] == "ok"
    }
    by_key = {(run["framework"], run["method"]): run for run in runs}
    rows = []
    notes = []
    for run in runs:
        peak = run.get("peak_memory_bytes")
        base = full_peak.get(run["framework"])
        share = f"{100 * peak / base:.0f}%" if peak and base else "-"
        versus = "-"
        hf = by_key.get(("hf", run["method"]))
        if run["framework"] == "evalhub" and hf and hf["status"] == "ok" and run["status"] == "ok":
            memory = f"{peak / hf['peak_memory_bytes']:.2f}x" if peak else "-"
            speed = run["tokens_per_second"] / hf["tokens_per_second"]
            versus = f"{memory} / {speed:.2f}x"
        rows.append(
            [
                run["name"],
                run["status"],
                gib(peak),
                share,
                KNOWN_RANGES.get(run["method"], "-"),
                fmt(run.get("tokens_per_second")),
                versus,
                fmt(run.get("trainable_params"), "{:,}"),
                gib(run.get("param_bytes")),
                gib(run.get("optimizer_state_bytes")),
                fmt(run.get("final_loss"), "{:.3f}"),
                fmt(run.get("wall_seconds"), "{:.0f}"),
            ]
        )
        if run["status"] != "ok":
            notes.append(
                f"  {run['name']}: {run['status']}: {run.get('error') or run.get('reason')}"
            )
    headers = ["run", "status", "peak GiB", "% of full", "users' range", "tokens/s"]
    headers += ["evalhub/HF mem / tok/s", "trainable", "weights GiB", "optim GiB", "loss", "wall s"]
    title = (
        f"Fine-tuning, {profile.get('name')}: random Llama {profile.get('hidden_size')}h x "
        f"{profile.get('layers')}L, vocab {profile.get('vocab_size')}, batch "
        f"{profile.get('batch_size')} x {profile.get('seq_len')} packed tokens, "
        f"gradient checkpointing {'on' if profile.get('gradient_checkpointing') else 'off'}, "
        f"{profile.get('timed_steps')} timed steps after {profile.get('warmup_steps')} warm-up"
    )
    legend = (
        "% of full: peak GPU memory (torch.cuda.max_memory_allocated) over the same framework's "
        "full fine-tuning peak.\nevalhub's Trainer keeps fp32 weights under bf16 autocast, also "
        "for frozen LoRA/DoRA bases; users' ranges assume a bf16 (or 4-bit) base and a 7B model, "
        "where weights dominate.\nLoRA/DoRA/QLoRA: r16, alpha 32, all linear layers + lm_head. "
        f"GaLore rank {profile.get('galore_rank')}. {payload.get('precision', '')}"
    )
    parts = [title, table(headers, rows), legend]
    if notes:
        parts.append("Skipped or failed:\n" + "\n".join(notes))
    return "\n".join(parts)


def serving_section(report: dict[str, Any]) -> str:
    rows = []
    for key, label in (
        ("multi_adapter_mixed", f"base + {report.get('adapters')} adapters, mixed"),
        ("multi_adapter_one_adapter", "same engine, all on adapter 0"),
        ("merged_single_model", "adapter 0 merged, one model"),
    ):
        stats = report.get(key)
        if not stats:
            rows.append([label, "-", "-", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                label,
                str(stats["requests"]),
                fmt(stats["requests_per_second"], "{:.2f}"),
                fmt(stats["tokens_per_second"], "{:,.1f}"),
                fmt(stats["p50_latency_s"], "{:.3f}"),
                gib(stats.get("resident_memory_bytes")),
                gib(stats.get("peak_memory_bytes")),
            ]
        )
    headers = ["local backend (LocalEngine)", "requests", "req/s", "tokens/s", "p50 s"]
    headers += ["weights GiB", "peak GiB"]
    lines = [
        f"Serving, {report.get('profile')} ({report.get('device')}): {report.get('decoding')}, "
        f"max_tokens {report.get('max_tokens')}",
        table(headers, rows),
    ]
    ratio = report.get("multi_vs_merged_tokens_per_second")
    if ratio is not None:
        lines.append(f"multi-adapter tokens/s over merged: {ratio:.2f}x")
    for key, label in (
        ("correctness", "correctness, mixed stream vs each request alone (must be 0)"),
        ("merged_agreement", "adapter 0 answers, multi-adapter vs merged bf16 (informative)"),
    ):
        check = report.get(key)
        if not check:
            lines.append(f"{label}: not compared")
            continue
        per_arm = ", ".join(
            f"{arm} {counts['mismatches']}/{counts['compared']}"
            for arm, counts in check["per_arm"].items()
        )
        lines.append(
            f"{label}: {check['mismatches']} of {check['compared']} differ ({per_arm or '-'})"
        )
    if "distinct_answers_base_and_adapters" in report:
        lines.append(
            "distinct answers to one prompt (base + adapters): "
            f"{report['distinct_answers_base_and_adapters']}"
        )
    for step, error in report.get("errors", {}).items():
        lines.append(f"FAILED step '{step}': {error['error']}")
    for skipped in report.get("skipped", []):
        lines.append(f"skipped: {skipped}")
    return "\n".join(lines)


def environment_section(env: dict[str, Any]) -> str:
    cuda = env.get("cuda", {})
    versions = env.get("versions", {})
    shown = ("torch", "transformers", "peft", "accelerate", "pydantic", "bitsandbytes")
    svd = "x".join(str(size) for size in cuda.get("svd_shape", [])) or "-"
    lines = [
        f"Environment: python {env.get('python')}; "
        + ", ".join(f"{name} {versions.get(name, '?')}" for name in shown),
        f"GPU: {cuda.get('device', 'none')} ({cuda.get('total_memory_gib', '-')} GiB), "
        f"bf16 matmul {cuda.get('bf16_matmul_tflops', '-')} TFLOP/s, "
        f"one {svd} fp32 SVD {cuda.get('svd_fp32_seconds', '-')} s",
        f"bitsandbytes 4-bit: {env.get('bitsandbytes_4bit')}",
        f"wheels: {env.get('wheels')}",
    ]
    for name, status in env.get("imports", {}).items():
        if not status.startswith("ok"):
            lines.append(f"import {name} failed: {status}")
    return "\n".join(lines)


def parts_section(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    rows = [[*row, "", "", ""][:4] for row in rows]
    return table(["part", "status", "seconds", "detail"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", type=Path, default=None)
    args = parser.parse_args()
    out = gpubench.out_dir()
    sections = [parts_section(args.parts)]
    if gpubench.is_dry_run():
        sections.append("CPU dry run: it checks the code paths; its timings mean nothing.")
    for name, render in (
        ("env.json", environment_section),
        ("finetune.json", finetune_section),
        ("serving.json", serving_section),
    ):
        payload = gpubench.read_json(out / name)
        sections.append(render(payload) if payload else f"{name}: missing (that part failed)")
    text = "\n\n".join(section for section in sections if section) + "\n"
    (out / "summary.txt").write_text(text)
    print(text, end="")
    print(f"result: wrote {out / 'summary.txt'}")


if __name__ == "__main__":
    main()
