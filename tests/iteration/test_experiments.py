"""Experiments: a grid of real fine-tuning trials on the tiny model, each scored on a held-out
suite, ranked with paired intervals against the untrained base, the winner given an alias."""

from __future__ import annotations

from typing import Any

import pytest

from evalhub.composition import job_handlers
from evalhub.eval.store import EvalStore
from evalhub.iteration import experiments
from evalhub.iteration.experiments import ExperimentSpec
from evalhub.jobs import JobStatus, Worker
from registry.errors import RegistryError
from tests.iteration.test_checkpoint_eval import SUITE


def spec(**changes: Any) -> ExperimentSpec:
    fields: dict[str, Any] = {
        "name": "sweep",
        "base": "tiny",
        "dataset": "upper-train",
        "suite": SUITE,
        "metric": "exact_match",
        "space": {"learning_rate": [0.0002, 0.006], "rank": [4, 16]},
        "fixed": {"max_steps": 120, "batch_size": 16, "warmup_ratio": 0.05},
        "eval_every": 40,
    }
    return ExperimentSpec.model_validate(fields | changes)


def drain(platform) -> int:  # type: ignore[no-untyped-def]
    """Runs every queued job with one worker, as `evalhub serve` would; returns how many turns."""
    worker = Worker(platform.jobs, job_handlers(platform))
    turns = 0
    while worker.run_once():
        turns += 1
    return turns


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_grid_ranks_trials_on_the_suite_and_the_winner_beats_the_base(
    platform, sweep_data
) -> None:  # type: ignore[no-untyped-def]
    job = experiments.create_experiment(platform, spec(), actor="alice")
    queued = experiments.view(platform, job)
    assert (queued.status, queued.trials_total, queued.trials_finished) == ("queued", 4, 0)
    assert [t.params for t in queued.trials] == [
        {"learning_rate": 0.0002, "rank": 4},
        {"learning_rate": 0.0002, "rank": 16},
        {"learning_rate": 0.006, "rank": 4},
        {"learning_rate": 0.006, "rank": 16},
    ]

    # One worker: the baseline, then the experiment steps aside for its four trials, then ranks.
    assert drain(platform) == 6
    done = experiments.view(platform, platform.jobs.get(job.id))
    assert done.status == "succeeded", done.error
    board = done.leaderboard
    assert board.baseline == "tiny/1" and board.baseline_value is not None
    assert board.baseline_value <= 0.1  # the base copies but does not upper-case

    ranked = [row for row in board.trials if row.rank is not None]
    assert [row.rank for row in ranked] == [1, 2, 3, 4]
    values = [row.value for row in ranked]
    assert values == sorted(values, reverse=True)  # type: ignore[type-var]
    winner = ranked[0]
    assert winner.best and winner.params["learning_rate"] == 0.006
    # A clear margin over the untrained base, with its interval.
    assert winner.value is not None and winner.value >= 0.6
    assert winner.vs_baseline is not None and winner.vs_baseline.ci_low is not None
    assert winner.vs_baseline.ci_low > 0.3 and winner.vs_baseline.interval == "tango-score"
    # The slow learning rate cannot be mistaken for the best.
    slow = [row for row in ranked if row.params["learning_rate"] == 0.0002]
    assert slow and not any(row.tied_with_best for row in slow)
    for row in ranked[1:]:
        assert row.vs_best is not None
        assert row.tied_with_best == (row.vs_best.ci_low <= 0 <= row.vs_best.ci_high)  # type: ignore[operator]

    # Each trial is an ordinary fine-tuning job, scored on the suite, its best checkpoint
    # registered; the winner carries the alias.
    store = EvalStore(platform.engine)
    for row in ranked:
        trial = platform.jobs.get(row.job_id)
        assert trial.kind == "fine_tune" and trial.payload["experiment"]["id"] == job.id
        assert trial.payload["train_dataset"] == "upper-train/1"
        assert store.run(row.run_id).metrics["exact_match"].aggregate.value == row.value  # type: ignore[arg-type]
        assert row.train_seconds and row.trained_tokens and row.memory_estimate_bytes
    assert done.winner == winner.version
    assert platform.registry.resolve("tiny-sweep@candidate").ref == winner.version

    # The stored leaderboard is the one served after the end.
    assert experiments.view(platform, platform.jobs.get(job.id)).leaderboard == board


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancelled_trials_keep_their_status_and_cancelling_the_experiment_cancels_the_rest(
    platform, sweep_data
) -> None:  # type: ignore[no-untyped-def]
    small = {"space": {"learning_rate": [0.006]}, "fixed": {"max_steps": 20, "batch_size": 16}}
    job = experiments.create_experiment(platform, spec(**small, eval_every=None))
    kept = experiments.create_experiment(platform, spec(name="other", **small, eval_every=None))
    (only,) = job.payload["trials"]
    platform.jobs.cancel(only["job_id"])
    drain(platform)
    failed = experiments.view(platform, platform.jobs.get(job.id))
    assert failed.status == "failed" and "no trial succeeded" in (failed.error or "")
    assert [(row.status, row.rank) for row in failed.leaderboard.trials] == [("cancelled", None)]
    assert experiments.view(platform, platform.jobs.get(kept.id)).status == "succeeded"

    waiting = experiments.create_experiment(platform, spec(**small, eval_every=None))
    cancelled = experiments.cancel_experiment(platform, waiting.id, actor="bob")
    assert cancelled.status is JobStatus.CANCELLED
    trial = platform.jobs.get(waiting.payload["trials"][0]["job_id"])
    assert trial.status is JobStatus.CANCELLED
    with pytest.raises(RegistryError, match="already cancelled"):
        experiments.cancel_experiment(platform, waiting.id)


REFUSED = [
    ({"space": {"rank": [4, 8], "learning_rate": [1e-3, 2e-3]}, "budget": 3}, "the grid has 4"),
    ({"search": "random"}, "needs a budget"),
    ({"space": {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}}}, "ranges need"),
    ({"fixed": {"rank": 8}, "space": {"rank": [4]}}, "in both space and fixed"),
    ({"space": {"rank": [0]}}, "trial 1 (rank=0)"),
    ({"space": {"n_epochs": [99]}, "fixed": {}}, "trial 1 (n_epochs=99)"),
    ({"dataset": "upper-held-out"}, "trials train on chat rows"),
    ({"dataset": "nope"}, "dataset:"),
    ({"baseline": "nope/3"}, "baseline:"),
    ({"metric": "bleu"}, "has no metric 'bleu'"),
    ({"alias": "Bad Alias"}, "alias"),
]


def test_a_bad_experiment_is_refused_and_stores_nothing(platform, sweep_data) -> None:  # type: ignore[no-untyped-def]
    for changes, words in REFUSED:
        with pytest.raises(RegistryError) as refused:
            experiments.create_experiment(platform, spec(**changes))
        assert words in refused.value.message, changes
    assert platform.jobs.search(limit=10).data == []
    assert [d.name for d in platform.registry.search_datasets().data] == [
        "upper-held-out",
        "upper-train",
    ]


def test_random_search_draws_the_budget_reproducibly() -> None:
    space = {"learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}, "rank": [4, 8, 16]}
    first = experiments.trial_params(spec(search="random", budget=5, space=space, seed=3))
    again = experiments.trial_params(spec(search="random", budget=5, space=space, seed=3))
    other = experiments.trial_params(spec(search="random", budget=5, space=space, seed=4))
    assert first == again != other and len(first) == 5
    assert all(1e-4 <= t["learning_rate"] <= 1e-2 and t["rank"] in (4, 8, 16) for t in first)
