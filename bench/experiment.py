"""The iteration loop on 2 CPU cores: a 4-trial tiny experiment end to end, and what scoring
checkpoints on the held-out suite adds to a fine-tuning job.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/experiment.py [--repeats 3]
Each measurement uses a fresh EVALHUB_HOME (SQLite, local artifacts) and one in-process worker, as
`evalhub experiment run` does without EVALHUB_URL. The 4 trials are the README's grid (learning
rate x rank, 120 steps, batch 16, scored every 40 steps on 40 held-out cases). The overhead is
the same 120-step job with and without `eval` (3 scored checkpoints), timed from claim to finish,
the generation cache cold, and again with a warm cache (the job repeated with the same seed:
every checkpoint's digest is the same, so its generations come from the cache). Prints a table
and writes bench/results/experiment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Run as a script, this file's folder comes first on sys.path and bench/registry.py would hide
# the registry package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results" / "experiment.json"
SUITE = """\
name: upper
version: "1"
dataset: upper-held-out
sampling: {temperature: 0, max_tokens: 24, seed: 0}
metrics:
  - name: exact_match
  - name: chrf
"""
FIXED = {"max_steps": 120, "batch_size": 16, "warmup_ratio": 0.05}


def platform_with_data(home: Path, tiny: Path) -> Any:
    from evalhub.finetune.tasks import as_eval_cases, upper_case_task, write_jsonl
    from evalhub.platform import Platform
    from evalhub.settings import Settings

    platform = Platform.open(Settings(home=home, _env_file=None))
    platform.registry.create_model("tiny", "base")
    platform.registry.register_version("tiny", tiny)
    cases = as_eval_cases(upper_case_task(40, seed=0, split="held_out"))
    (home / "cases.jsonl").write_text("".join(json.dumps(case) + "\n" for case in cases))
    platform.registry.add_dataset_version(
        "upper-held-out", home / "cases.jsonl", format="eval", create=True
    )
    train = write_jsonl(home / "train.jsonl", upper_case_task(200, seed=0))
    platform.registry.add_dataset_version("upper-train", train, format="chat", create=True)
    return platform


def drain(platform: Any) -> None:
    from evalhub.composition import job_handlers
    from evalhub.jobs import Worker

    worker = Worker(platform.jobs, job_handlers(platform))
    while worker.run_once():
        pass


def experiment_seconds(tiny: Path) -> dict[str, Any]:
    from evalhub.iteration import experiments

    with tempfile.TemporaryDirectory() as home:
        platform = platform_with_data(Path(home), tiny)
        spec = experiments.ExperimentSpec(
            name="sweep", base="tiny", dataset="upper-train", suite=SUITE, metric="exact_match",
            space={"learning_rate": [0.0002, 0.006], "rank": [4, 16]}, fixed=FIXED, eval_every=40,
        )  # fmt: skip
        started = time.perf_counter()
        job = experiments.create_experiment(platform, spec)
        drain(platform)
        seconds = time.perf_counter() - started
        view = experiments.view(platform, platform.jobs.get(job.id))
        assert view.status == "succeeded", view.error
        best = view.leaderboard.trials[0]
        platform.close()
    return {"seconds": seconds, "trials": view.trials_total, "best": best.value}


def job_seconds(tiny: Path, scored: bool) -> tuple[float, float | None]:
    """Claim-to-finish seconds of one 120-step job, then of the same job again (warm cache)."""
    from evalhub.finetune import files, service
    from evalhub.finetune.protocol import FineTuneJobCreate
    from evalhub.iteration import checkpoints

    timings = []
    with tempfile.TemporaryDirectory() as home:
        platform = platform_with_data(Path(home), tiny)
        upload = files.create_file(
            platform, Path(home) / "train.jsonl", filename="train.jsonl", purpose="fine-tune"
        )
        options: dict[str, Any] = {"method": "lora", "rank": 16, "learning_rate": 0.006, **FIXED}
        options.pop("batch_size")
        if scored:
            options["eval"] = {"suite": SUITE, "metric": "exact_match", "every": 40}
        else:
            options["checkpoint_every"] = 40
        for suffix in ("first", "again"):
            request = FineTuneJobCreate.model_validate({
                "model": "tiny", "training_file": upload.id, "suffix": suffix, "seed": 0,
                "hyperparameters": {"batch_size": 16}, "evalhub": options,
            })  # fmt: skip
            job = service.create_job(
                platform, request, plan_eval=lambda s: checkpoints.plan(platform, s)
            )
            drain(platform)
            done = platform.jobs.get(job.id)
            assert done.status.value == "succeeded", done.error
            assert done.started_at is not None and done.finished_at is not None
            timings.append((done.finished_at - done.started_at).total_seconds())
        platform.close()
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from evalhub.finetune.tiny import build_tiny_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        tiny = Path(root) / "tiny"
        build_tiny_model(tiny, seed=0)
        sweeps = [experiment_seconds(tiny) for _ in range(args.repeats)]
        plain = [job_seconds(tiny, scored=False) for _ in range(args.repeats)]
        scored = [job_seconds(tiny, scored=True) for _ in range(args.repeats)]

    def median(values: list[float]) -> float:
        return statistics.median(values)

    plain_s = median([first for first, _ in plain])
    cold_s = median([first for first, _ in scored])
    warm_s = median([again for _, again in scored if again is not None])
    result = {
        "experiment_4_trials_seconds": median([s["seconds"] for s in sweeps]),
        "experiment_best_exact_match": sweeps[0]["best"],
        "job_seconds_unscored": plain_s,
        "job_seconds_scored_cold_cache": cold_s,
        "job_seconds_scored_warm_cache": warm_s,
        "scoring_overhead_cold": cold_s / plain_s - 1,
        "scoring_overhead_warm": warm_s / plain_s - 1,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }
    rows = [
        ("4-trial experiment, end to end (baseline, 4 x 120 steps, 12 scored checkpoints)",
         f"{result['experiment_4_trials_seconds']:.1f} s"),
        ("120-step LoRA job, checkpoints not scored", f"{plain_s:.1f} s"),
        ("the same job, 3 checkpoints scored on 40 cases (cold cache)",
         f"{cold_s:.1f} s (+{result['scoring_overhead_cold']:.0%})"),
        ("the same job again, same seed (warm cache)",
         f"{warm_s:.1f} s (+{result['scoring_overhead_warm']:.0%})"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  median of {args.repeats}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
