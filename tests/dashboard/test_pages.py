"""Every dashboard page run by Streamlit's AppTest against the real seeded server: what a user
sees (the numbers the API has), who may press which button, and what a bad token shows."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.dashboard.conftest import EVAL_CASES, QUEUE, Seeded, app_test

# One test process for the seeded server, under --dist loadgroup (see tests/dashboard/conftest.py).
pytestmark = pytest.mark.xdist_group("dashboard")


def api(seeded: Seeded, path: str, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {seeded.admin}"}
    response = httpx.get(f"{seeded.url}/api/v1{path}", params=params, headers=headers, timeout=60)
    response.raise_for_status()
    return response.json()


def trial_jobs(seeded: Seeded) -> list[str]:
    """The fine-tuning jobs of the seeded experiment's trials."""
    return [t["job_id"] for t in api(seeded, f"/experiments/{seeded.experiment_id}")["trials"]]


def text_of(at: Any) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += (
        [i.value for i in at.info] + [w.value for w in at.warning] + [e.value for e in at.error]
    )
    return "\n".join(str(p) for p in parts)


def frames(at: Any) -> list[Any]:
    return [frame.value for frame in at.dataframe]


def run(seeded: Seeded, page: str, token: str | None) -> Any:
    at = app_test(seeded, page, token)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_overview_shows_deployments_rollouts_alerts_runs_and_jobs(seeded: Seeded) -> None:
    at = run(seeded, "views/overview.py", seeded.viewer)
    tiles = {metric.label: metric.value for metric in at.metric}
    assert tiles["Deployments"] == "2" and tiles["Alerts"] == "1"
    shown = text_of(at)
    assert (
        "**chat** on `cpu`: control → bot@production (50%), candidate → bot@candidate (50%)"
        in shown
    )
    assert "rollout rolled_back · controller: **rollback**" in shown
    runs = frames(at)[1]
    latest = api(seeded, "/evals", limit=10)["data"]  # the experiment's runs are among them
    assert list(runs["run"]) == [run["id"] for run in latest]
    assert set(runs["status"]) == {"completed"}
    jobs = frames(at)[2]
    assert set(jobs["job"]) == {seeded.job_id, *trial_jobs(seeded)}
    assert set(jobs["status"]) == {"succeeded"}


def test_registry_shows_versions_lineage_and_alias_history(seeded: Seeded) -> None:
    at = run(seeded, "views/registry.py", seeded.viewer)
    models = frames(at)[0]
    # tiny-dash: the job's adapter; tiny-dash-sweep: the experiment's trials
    assert set(models["model"]) == {"bot", "tiny", "tiny-dash", "tiny-dash-sweep"}
    at.selectbox(key="model").select("bot").run()
    versions = frames(at)[1]
    assert sorted(versions["version"]) == [1, 2, 3] and set(versions["base"]) == {"tiny/1"}
    at.selectbox(key="alias").select("candidate").run()
    history = frames(at)[2]
    assert list(history["to"]) == [2, 3]  # oldest first, as the API lists it
    assert "**bot@candidate** points at version **3**" in text_of(at)
    assert "tiny/1 —adapter of→ bot/" in text_of(at)  # the lineage graph's edges, in words
    at.selectbox(key="lineage-version").select(1).run()  # bot@production
    assert "bot/1 —served by→ deployment:chat/control" in text_of(at)


def test_a_viewer_sees_the_alias_buttons_disabled_and_an_admin_rolls_back(seeded: Seeded) -> None:
    viewer = run(seeded, "views/registry.py", seeded.viewer)
    viewer.selectbox(key="model").select("bot").run()
    for key in ("promote", "rollback-alias"):
        assert viewer.button(key=key).disabled, key
    assert "you are viewer" in (viewer.button(key="rollback-alias").help or "")

    editor = run(seeded, "views/registry.py", seeded.editor)
    editor.selectbox(key="model").select("bot").run()
    assert not editor.button(key="promote").disabled
    assert editor.button(key="rollback-alias").disabled  # rolling back an alias is for admins

    admin = run(seeded, "views/registry.py", seeded.admin)
    admin.selectbox(key="model").select("bot").run()
    admin.selectbox(key="alias").select("candidate").run()
    admin.button(key="rollback-alias").click().run()
    assert not admin.exception
    assert api(seeded, "/models/bot/aliases/candidate")["version"] == 2
    httpx.put(
        f"{seeded.url}/api/v1/models/bot/aliases/candidate",
        json={"version": 3},
        headers={"Authorization": f"Bearer {seeded.admin}"},
    ).raise_for_status()


def test_evaluations_compare_two_runs_with_the_apis_numbers(seeded: Seeded) -> None:
    at = run(seeded, "views/evaluations.py", seeded.viewer)
    runs = frames(at)[0]
    served = api(seeded, "/evals", limit=200)["data"]
    assert set(runs["run"]) == {run["id"] for run in served}
    assert {seeded.baseline_run, seeded.candidate_run} <= set(runs["run"])
    labels = at.selectbox(key="baseline").options
    baseline = next(label for label in labels if seeded.baseline_run in label)
    candidate = next(label for label in labels if seeded.candidate_run in label)
    at.selectbox(key="baseline").select(baseline).run()
    at.selectbox(key="candidate").select(candidate).run()
    comparison = api(
        seeded, "/evals/compare", baseline=seeded.baseline_run, candidate=seeded.candidate_run
    )
    table = frames(at)[1].set_index("metric")
    for metric in ("exact_match", "json_valid", "llm_judge"):
        expected = comparison["metrics"][metric]
        assert table.loc[metric, "difference"] == pytest.approx(expected["difference"])
        assert table.loc[metric, "95% low"] == pytest.approx(expected["ci_low"])
        assert table.loc[metric, "wins"] == expected["wins"]
    cases = frames(at)[-1]
    assert len(cases) == 12 and cases["baseline output"].notna().all()
    at.toggle(key="only-regressed").set_value(True).run()
    regressed = {r["case_id"] for r in comparison["regressions"]}
    if regressed:
        assert set(frames(at)[-1]["case"]) == regressed
    else:  # two good adapters: the API found no regressed case, and the page says so
        assert "No regressed cases on this page." in text_of(at)
        assert at.toggle(key="only-regressed").label == "Only regressed cases (0)"


def test_finetuning_shows_the_jobs_curve_events_and_a_viewer_cannot_start_one(
    seeded: Seeded,
) -> None:
    at = run(seeded, "views/finetuning.py", seeded.viewer)
    jobs = frames(at)[0]
    assert set(jobs["job"]) == {seeded.job_id, *trial_jobs(seeded)}
    assert set(jobs["status"]) == {"succeeded"}
    # A trial of the experiment: its checkpoints carry their scores on the held-out suite.
    trial = trial_jobs(seeded)[0]
    at.selectbox(key="job").select(trial).run()
    listed = api(seeded, f"/experiments/{seeded.experiment_id}")["leaderboard"]["trials"]
    scored = api(seeded, f"/finetune/runs/{trial}/metrics")["final"]["suite_exact_match"]
    checkpoints = frames(at)[2]  # after the jobs and the events
    assert sorted(checkpoints["step"]) == [40, 80]
    assert scored in set(checkpoints["suite exact_match"])
    assert scored == next(row["value"] for row in listed if row["job_id"] == trial)
    at.selectbox(key="job").select(seeded.job_id).run()
    metrics = api(seeded, f"/finetune/runs/{seeded.job_id}/metrics")
    points = sum(p["train_loss"] is not None for p in metrics["series"])
    assert f"Loss of {seeded.job_id} ({points} training points)" in str(
        at.get("plotly_chart")[0].proto
    )
    tiles = {metric.label: metric.value for metric in at.metric}
    assert tiles["Registered as"] == metrics["registered_version"]
    start = at.button(key="start-job")
    assert start.disabled and "you are viewer" in (start.help or "")


def test_deployments_show_requests_per_arm_and_the_controllers_decision(seeded: Seeded) -> None:
    at = run(seeded, "views/deployments.py", seeded.viewer)
    at.selectbox(key="deployment").select("chat").run()
    per_arm = frames(at)[1]
    assert dict(zip(per_arm["arm"], per_arm["requests"], strict=True)) == seeded.requests
    assert at.button(key="rollback-deployment").disabled
    at.selectbox(key="deployment").select("canary").run()
    decision = api(seeded, "/deployments/canary/decisions")["data"][0]
    assert decision["action"] == "rollback"
    assert f"**rollback** at {decision['weight']:g}%" in text_of(at)
    assert decision["reason"] in text_of(at)


def test_an_editor_rolls_back_a_deployment_and_the_weights_change(seeded: Seeded) -> None:
    admin = {"Authorization": f"Bearer {seeded.admin}"}
    seeded_arms = api(seeded, "/deployments/chat")["arms"]
    shifted = [{**arm, "weight": 100 if arm["name"] == "candidate" else 0} for arm in seeded_arms]
    httpx.patch(
        f"{seeded.url}/api/v1/deployments/chat", json={"arms": shifted}, headers=admin
    ).raise_for_status()
    at = run(seeded, "views/deployments.py", seeded.editor)
    at.selectbox(key="deployment").select("chat").run()
    assert dict(zip(frames(at)[0]["arm"], frames(at)[0]["weight %"], strict=True)) == {
        "control": 0,
        "candidate": 100,
    }
    at.button(key="rollback-deployment").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("rolled back" in s.value for s in at.success)
    weights = {a["name"]: a["weight"] for a in api(seeded, "/deployments/chat")["arms"]}
    assert (
        weights == {a["name"]: a["weight"] for a in seeded_arms} == {"control": 50, "candidate": 50}
    )


def test_monitoring_shows_the_drift_check_and_the_alert(seeded: Seeded) -> None:
    at = run(seeded, "views/monitoring.py", seeded.viewer)
    check = api(seeded, f"/monitors/drift/{seeded.drift_check}")
    drift = frames(at)[0]
    assert list(drift["check"]) == [check["id"]]
    assert list(drift["share drifted"]) == [pytest.approx(check["share_drifted"])]
    alerts = frames(at)[1]
    assert list(alerts["alert"]) == [seeded.alert_id] and list(alerts["rule"]) == ["busy-chat"]
    assert "busy-chat (requests > 10 on chat)" in text_of(at)


def test_a_bad_or_missing_token_shows_the_message_and_the_login_box(seeded: Seeded) -> None:
    for token, message in ((None, "No API token"), ("ehk_not-a-token", "refused the token")):
        at = app_test(seeded, "views/overview.py", token)
        at.run()
        assert not at.exception
        assert any(message in w.value for w in at.warning), [w.value for w in at.warning]
        assert [t.label for t in at.text_input] == ["Server", "API token"]


def test_human_evaluation_shows_progress_the_next_item_and_judge_agreement(
    seeded: Seeded,
) -> None:
    at = run(seeded, "views/human_eval.py", seeded.editor)
    queues = frames(at)[0]
    assert list(queues["queue"]) == ["chat-sample", QUEUE]  # newest first
    assert list(queues["items"]) == [10, EVAL_CASES]
    at.selectbox(key="queue").set_value(QUEUE).run()
    assert not at.exception, at.exception
    progress = at.get("progress")[0].proto.text
    assert progress.startswith(f"you have labelled {EVAL_CASES // 2} of {EVAL_CASES}")
    item = api(seeded, f"/annotations/queues/{QUEUE}/items", limit=100)["data"][EVAL_CASES // 2]
    assert item["output"] in [
        c.value for c in at.code
    ]  # the first item the editor has not labelled
    report = api(seeded, f"/annotations/queues/{QUEUE}/agreement")
    judges, raters = (table.value for table in at.table)
    (judge,) = report["judges"]
    assert list(judges[""]) == ["llm_judge"] and list(judges["labels"]) == [judge["n"]]
    assert list(judges["kappa [95%]"]) == [
        f"{judge['kappa']:.2f} [{judge['kappa_low']:.2f}, {judge['kappa_high']:.2f}]"
    ]
    # The two seeded raters (the browser test's rater may be in the table too).
    seeded_pair = raters[(raters[""] == "dash-editor") & (raters["against"] == "dash-rater")]
    assert list(seeded_pair["items"]) == [6]
    assert next(iter(seeded_pair["raw agreement [95%]"])).startswith("0.67 [")  # 4 of 6 agree

    # Label the shown item through the form: the next one comes, the API has the label.
    at.radio(key="label-value").set_value("4")
    at.button(key="save-label").click().run()
    assert not at.exception, at.exception
    assert f"labelled item {item['position']}: 4" in [s.value for s in at.success]
    labelled = api(seeded, f"/annotations/queues/{QUEUE}/items", limit=100)["data"]
    mine = [label for i in labelled if i["id"] == item["id"] for label in i["labels"]]
    assert [(label["rater"], label["value"]) for label in mine] == [("dash-editor", "4")]
    assert at.get("progress")[0].proto.text.startswith(f"you have labelled {EVAL_CASES // 2 + 1}")


def test_a_viewer_sees_the_agreement_but_cannot_label(seeded: Seeded) -> None:
    at = run(seeded, "views/human_eval.py", seeded.viewer)
    assert "Labelling needs the editor role; you are viewer." in text_of(at)
    assert not [b for b in at.button if b.key == "save-label"]


PAGES = [
    "views/overview.py",
    "views/registry.py",
    "views/evaluations.py",
    "views/human_eval.py",
    "views/finetuning.py",
    "views/experiments.py",
    "views/deployments.py",
    "views/monitoring.py",
]
# Buttons that change nothing on the server: paging, and signing out of this browser session.
HARMLESS = ("sign-out", ":previous", ":next")


@pytest.mark.parametrize("page", PAGES)
def test_a_viewer_sees_no_enabled_button_that_changes_anything(seeded: Seeded, page: str) -> None:
    at = run(seeded, page, seeded.viewer)
    acting = [b for b in at.button if not str(b.key or "").endswith(HARMLESS)]
    assert all(b.disabled for b in acting), [(b.key, b.label) for b in acting if not b.disabled]


def test_experiments_show_the_leaderboard_and_checkpoint_scores(seeded: Seeded) -> None:
    at = run(seeded, "views/experiments.py", seeded.viewer)
    experiments = frames(at)[0]
    assert list(experiments["experiment"]) == [seeded.experiment_id]
    assert list(experiments["trials"]) == ["2/2"] and list(experiments["status"]) == ["succeeded"]
    served = api(seeded, f"/experiments/{seeded.experiment_id}")
    board = frames(at)[1]
    # The page's leaderboard is the API's, in its order, with the winner's version.
    ranked = served["leaderboard"]["trials"]
    assert list(board["rank"]) == [row["rank"] for row in ranked]
    assert list(board["exact_match"]) == [row["value"] for row in ranked]
    assert ranked[0]["value"] >= 0.5 and ranked[0]["params"] == {"learning_rate": 0.006}
    expected = [
        "best" if row["best"] else "cannot tell apart" if row["tied_with_best"] else "worse"
        for row in ranked
    ]
    assert list(board["vs best"]) == expected and expected[0] == "best"
    assert list(board["version"])[:1] == [served["winner"]]
    tiles = {metric.label: metric.value for metric in at.metric}
    assert tiles["Trials ended"] == "2/2" and tiles["Winner"] == served["winner"]
    # Two charts: the leaderboard's bars and every scored checkpoint's curve (two per trial).
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    assert len(charts) == 2
    curves = charts[1]["data"]
    assert len(curves) == 2 and all(trace["x"] == [40, 80] for trace in curves)
