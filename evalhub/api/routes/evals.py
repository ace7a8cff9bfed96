"""Eval runs: start one as a background job, follow it, read its cases, compare two."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from evalhub.api.deps import Editor, EventsAfter, Limit, PlatformDep, Viewer
from evalhub.eval.compare import Comparison
from evalhub.eval.errors import (
    ErrorExport,
    ErrorQuery,
    ErrorReport,
    ExportedErrors,
    analyse,
    export_errors,
)
from evalhub.eval.record import EvalRun
from evalhub.eval.service import EvalRequest, EvalService, EvalStarted
from evalhub.eval.store import EvalCaseInfo, EvalRunInfo
from evalhub.jobs.queue import JobEvent
from registry.entities import Page

router = APIRouter(prefix="/evals", tags=["evals"])


class EvalImport(BaseModel):
    run: EvalRun
    suite: str | None = Field(default=None, description="the suite's YAML, as the run loaded it")
    filename: str = "suite.yaml"
    dataset: str | None = Field(default=None, description="the suite's dataset file (JSONL)")


@router.post("", status_code=202)
def start_eval(body: EvalRequest, platform: PlatformDep, principal: Editor) -> EvalStarted:
    """Validates the suite and target, then queues the run; a bad suite answers 400 with every
    problem's file and line, and nothing is stored."""
    return EvalService(platform).start(body, actor=principal.name)


@router.post("/import", status_code=201)
def import_eval(body: EvalImport, platform: PlatformDep, principal: Editor) -> EvalRunInfo:
    """Records a run finished by the CLI against an endpoint (`evalhub eval run --endpoint`)."""
    return EvalService(platform).import_run(
        body.run,
        actor=principal.name,
        suite_text=body.suite,
        filename=body.filename,
        dataset_text=body.dataset,
    )


@router.get("")
def list_evals(
    platform: PlatformDep,
    _: Viewer,
    suite: str | None = None,
    limit: Limit = 50,
    page_token: str | None = None,
) -> Page[EvalRunInfo]:
    return EvalService(platform).store.search(suite=suite, limit=limit, page_token=page_token)


@router.get("/compare")
def compare_evals(
    platform: PlatformDep,
    _: Viewer,
    baseline: Annotated[str, Query(description="baseline run id")],
    candidate: Annotated[str, Query(description="candidate run id")],
) -> Comparison:
    """Paired comparison over the cases both runs share: CIs, p-values, regressed cases."""
    return EvalService(platform).compare(baseline, candidate)


@router.get("/{run_id}")
def get_eval(run_id: str, platform: PlatformDep, _: Viewer) -> EvalRunInfo:
    return EvalService(platform).store.get(run_id)


@router.get("/{run_id}/run")
def get_eval_run(run_id: str, platform: PlatformDep, _: Viewer) -> dict[str, Any]:
    """The finished run's whole log (every case's outputs and scores), as `--output` writes it."""
    return EvalService(platform).store.run(run_id).model_dump(mode="json")


@router.get("/{run_id}/cases")
def list_eval_cases(
    run_id: str,
    platform: PlatformDep,
    _: Viewer,
    limit: Limit = 100,
    page_token: str | None = None,
) -> Page[EvalCaseInfo]:
    return EvalService(platform).store.cases(run_id, limit=limit, page_token=page_token)


@router.get("/{run_id}/errors")
def get_eval_errors(
    run_id: str,
    platform: PlatformDep,
    _: Viewer,
    baseline: Annotated[str | None, Query(max_length=64)] = None,
    metric: Annotated[str | None, Query(max_length=128)] = None,
    below: float = 0.5,
    clusters: Annotated[int, Query(ge=1, le=50)] = 4,
) -> ErrorReport:
    """The run's failing cases (or, with a baseline, regressed ones) grouped by slice, by metric
    and by clusters of the prompts' embeddings, each with examples."""
    query = ErrorQuery(baseline=baseline, metric=metric, below=below, clusters=clusters)
    return analyse(EvalService(platform), run_id, query)


@router.post("/{run_id}/errors/export", status_code=201)
def export_eval_errors(
    run_id: str, body: ErrorExport, platform: PlatformDep, principal: Editor
) -> ExportedErrors:
    """A group's failing cases as chat training rows (the reference answers) or eval cases,
    registered as a dataset version whose rows name the run and case they came from."""
    return export_errors(EvalService(platform), run_id, body, actor=principal.name)


@router.get("/{run_id}/events")
def list_eval_events(
    run_id: str, platform: PlatformDep, _: Viewer, after: EventsAfter = None
) -> list[JobEvent]:
    return EvalService(platform).events(run_id, after=after)


@router.post("/{run_id}/resume", status_code=202)
def resume_eval(run_id: str, platform: PlatformDep, principal: Editor) -> EvalStarted:
    """Queues a failed run again; the generations it finished are kept, not redone."""
    return EvalService(platform).resume(run_id, actor=principal.name)
