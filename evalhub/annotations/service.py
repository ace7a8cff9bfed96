"""Human evaluation: queues of answers drawn from an eval run or from a deployment's traffic,
labelled by people on the queue's rubric, and how far each LLM judge agrees with them.

A queue is fixed when it is created: its items copy the prompt, the answer (two answers for a
pairwise queue, in a random order per item that raters never see resolved) and the judge scores,
so later runs or traffic never change what was labelled. One label per rater per item; labelling
an item again replaces the rater's label.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import delete
from sqlmodel import Session, col, func, select

from evalhub.annotations.tables import AnnotationItemRow, AnnotationLabelRow, AnnotationQueueRow
from evalhub.eval.case import Case
from evalhub.eval.service import EvalService
from evalhub.monitoring.export import answered
from evalhub.monitoring.online import prompt_case
from evalhub.monitoring.tables import OnlineScoreRow
from evalhub.platform import Platform
from evalhub.serving.deployments import DeploymentService
from evalhub.serving.tables import TrafficRow
from monitors.agreement import METHOD, Pair, agreement
from registry.db import writer
from registry.entities import DatasetFormat, DatasetVersion, Mutation, Page
from registry.errors import already_exists, invalid, not_found
from registry.names import NAME_PATTERN
from registry.paging import decode_page_token, fetch_page, page_of
from registry.tables import utcnow

Kind = Literal["scale", "labels", "pairwise"]
MAX_ITEMS = 5000
#: The newest answered requests a traffic queue samples from.
TRAFFIC_POOL = 100_000
PAIRWISE = ("candidate", "baseline", "tie")
QUESTIONS = {
    "scale": "How good is the answer?",
    "labels": "Which label fits the answer?",
    "pairwise": "Which answer is better?",
}


class QueueCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{NAME_PATTERN}$", max_length=128)
    description: str = Field(default="", max_length=4000)
    kind: Kind = Field(description="a point on a scale, one of the labels, or a pairwise choice")
    question: str | None = Field(default=None, max_length=2000, description="what raters answer")
    scale: tuple[int, int] | None = Field(
        default=None, description="scale queues: lowest and highest point (default 1 to 5)"
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=20,
        description="labels queues: the labels, worst first (an LLM judge's 0-1 score maps onto "
        "them in this order)",
    )
    eval_run: str | None = Field(
        default=None, max_length=64, description="the run whose answers are labelled"
    )
    baseline_run: str | None = Field(
        default=None, max_length=64, description="pairwise: the run eval_run is compared with"
    )
    deployment: str | None = Field(
        default=None, max_length=128, description="sample this deployment's answered requests"
    )
    arm: str | None = Field(default=None, max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    sample: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ITEMS,
        description="how many items, drawn at random (default: every case of a run, 100 requests)",
    )
    seed: int = Field(default=0, description="for the sample and the pairwise order")

    @model_validator(mode="after")
    def _consistent(self) -> QueueCreate:
        if (self.eval_run is None) == (self.deployment is None):
            raise ValueError("name exactly one source: eval_run or deployment")
        if self.kind == "pairwise" and (self.eval_run is None or self.baseline_run is None):
            raise ValueError("a pairwise queue compares two runs: give eval_run and baseline_run")
        if self.kind != "pairwise" and self.baseline_run is not None:
            raise ValueError("baseline_run is for pairwise queues")
        if self.kind == "scale":
            low, high = self.scale or (1, 5)
            if not 2 <= high - low + 1 <= 11:
                raise ValueError("a scale has 2 to 11 points, lowest first (e.g. [1, 5])")
        elif self.scale is not None:
            raise ValueError("scale is for scale queues")
        if self.kind == "labels":
            if not self.labels:
                raise ValueError("a labels queue declares its labels, worst first")
            if len(set(self.labels)) != len(self.labels) or any(
                not 0 < len(label) <= 64 for label in self.labels
            ):
                raise ValueError("labels are distinct, 1 to 64 characters each")
        elif self.labels is not None:
            raise ValueError("labels are for labels queues")
        return self


class Queue(BaseModel):
    name: str
    description: str
    kind: Kind
    question: str
    choices: list[str] = Field(description="what a label may be, in order")
    source: dict[str, Any]
    items: int
    labelled: int = Field(description="items with at least one label")
    labels: int
    raters: list[str]
    created_at: datetime
    created_by: str


class Label(BaseModel):
    item: int
    rater: str
    value: str
    comment: str | None
    created_at: datetime
    replaced: bool = False


class LabelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str | int = Field(
        description="a scale point, one of the labels, or for pairwise a, b or tie (as shown)"
    )
    comment: str | None = Field(default=None, max_length=4000)


class ItemToRate(BaseModel):
    """An item as a rater sees it: no judge scores, no other labels, pairwise answers as a/b."""

    id: int
    position: int
    source_id: str
    prompt: list[dict[str, Any]]
    reference: str | None
    output: str | None = Field(description="the answer (scale and labels queues)")
    a: str | None = Field(description="pairwise: the answer shown first")
    b: str | None = Field(description="pairwise: the answer shown second")


class NextItem(BaseModel):
    item: ItemToRate | None = Field(description="None when this rater has labelled every item")
    done: int = Field(description="items this rater has labelled")
    total: int


class Item(BaseModel):
    """An item with everything: which answer is which, the judges' scores, every label."""

    id: int
    position: int
    source_id: str
    prompt: list[dict[str, Any]]
    reference: str | None
    output: str
    baseline_output: str | None
    judges: dict[str, float]
    details: dict[str, Any]
    labels: list[Label]


class AgreementRow(BaseModel):
    left: str
    right: str
    n: int = Field(description="pairs of labels")
    items: int
    raw: float
    raw_low: float
    raw_high: float
    kappa: float | None
    kappa_low: float | None
    kappa_high: float | None


class AgreementReport(BaseModel):
    queue: str
    method: str
    judges: list[AgreementRow] = Field(description="each LLM judge against every human label")
    raters: list[AgreementRow] = Field(description="each pair of raters on their common items")


class AnnotationService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    # Queues

    def create(self, body: QueueCreate, *, actor: str) -> Queue:
        rng = random.Random(body.seed)
        if body.eval_run is not None:
            items = list(self._run_items(body, rng))
            source: dict[str, Any] = {"eval_run": body.eval_run}
            if body.baseline_run is not None:
                source["baseline_run"] = body.baseline_run
        else:
            assert body.deployment is not None
            items = self._traffic_items(body, rng)
            source = {"deployment": body.deployment, "arm": body.arm, "sample": len(items)}
        if not items:
            raise invalid("the source has no answers to label")
        rubric: dict[str, Any] = {"question": body.question or QUESTIONS[body.kind]}
        if body.kind == "scale":
            rubric["scale"] = list(body.scale or (1, 5))
        if body.kind == "labels":
            rubric["labels"] = body.labels
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            if session.exec(
                select(AnnotationQueueRow).where(AnnotationQueueRow.name == body.name)
            ).first():
                raise already_exists(f"annotation queue {body.name!r} already exists")
            row = AnnotationQueueRow(
                name=body.name,
                description=body.description,
                kind=body.kind,
                rubric=rubric,
                source=source,
                created_by=actor,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            for position, item in enumerate(items, start=1):
                item.queue_id, item.position = row.id, position
                session.add(item)
            session.flush()
            view = self._queue(session, row)
            after = view.model_dump(mode="json")
            self._record(session, actor, "annotation_queue.create", body.name, after)
            session.commit()
        return view

    def search(self, *, limit: int = 50, page_token: str | None = None) -> Page[Queue]:
        """Newest first."""
        query = select(AnnotationQueueRow)
        after = decode_page_token(page_token)
        if after is not None:
            query = query.where(col(AnnotationQueueRow.id) < after)
        with Session(self.platform.engine) as session:
            rows, more = fetch_page(
                session, query.order_by(col(AnnotationQueueRow.id).desc()), limit
            )
            return page_of(rows, more, lambda row: self._queue(session, row))

    def get(self, name: str) -> Queue:
        with Session(self.platform.engine) as session:
            return self._queue(session, _queue_row(session, name))

    def delete(self, name: str, *, actor: str) -> None:
        """The queue, its items and its labels: export them first if they are worth keeping."""
        with Session(writer(self.platform.engine)) as session:
            row = _queue_row(session, name)
            before = self._queue(session, row).model_dump(mode="json")
            for table in (AnnotationLabelRow, AnnotationItemRow):
                session.execute(delete(table).where(col(table.queue_id) == row.id))
            session.delete(row)
            self._record(session, actor, "annotation_queue.delete", name, None, before=before)
            session.commit()

    # Items and labels

    def items(self, name: str, *, limit: int = 100, page_token: str | None = None) -> Page[Item]:
        """In queue order, each with its labels and which answer is which."""
        with Session(self.platform.engine) as session:
            queue = _queue_row(session, name)
            query = select(AnnotationItemRow).where(AnnotationItemRow.queue_id == queue.id)
            after = decode_page_token(page_token)
            if after is not None:
                query = query.where(col(AnnotationItemRow.position) > after)
            rows, more = fetch_page(session, query.order_by(col(AnnotationItemRow.position)), limit)
            labels = _labels_of(session, [r.id for r in rows if r.id is not None])
            return page_of(
                rows,
                more,
                lambda r: _item(r, labels.get(r.id or 0, [])),
                key=lambda r: r.position,
            )

    def next(self, name: str, rater: str) -> NextItem:
        """The first item in queue order that this rater has not labelled."""
        with Session(self.platform.engine) as session:
            queue = _queue_row(session, name)
            mine = select(AnnotationLabelRow.item_id).where(
                AnnotationLabelRow.queue_id == queue.id, AnnotationLabelRow.rater == rater
            )
            row = session.exec(
                select(AnnotationItemRow)
                .where(
                    AnnotationItemRow.queue_id == queue.id,
                    col(AnnotationItemRow.id).not_in(mine),
                )
                .order_by(col(AnnotationItemRow.position))
                .limit(1)
            ).first()
            done = session.exec(select(func.count()).select_from(mine.subquery())).one()
            total = _count_items(session, queue)
            return NextItem(item=_to_rate(queue, row) if row else None, done=int(done), total=total)

    def label(self, name: str, item_id: int, body: LabelCreate, *, rater: str) -> Label:
        with Session(writer(self.platform.engine), expire_on_commit=False) as session:
            queue = _queue_row(session, name)
            item = session.get(AnnotationItemRow, item_id)
            if item is None or item.queue_id != queue.id:
                raise not_found(f"annotation queue {name!r} has no item {item_id}")
            value = _value(queue, item, body.value)
            row = session.exec(
                select(AnnotationLabelRow).where(
                    AnnotationLabelRow.item_id == item_id, AnnotationLabelRow.rater == rater
                )
            ).first()
            before = _label(row).model_dump(mode="json") if row is not None else None
            if row is None:
                assert queue.id is not None
                row = AnnotationLabelRow(queue_id=queue.id, item_id=item_id, rater=rater, value="")
            row.value, row.comment, row.created_at = value, body.comment, utcnow()
            session.add(row)
            session.flush()
            view = _label(row).model_copy(update={"replaced": before is not None})
            self._record(
                session,
                rater,
                "annotation.replace" if before else "annotation.create",
                f"{name}/items/{item_id}",
                view.model_dump(mode="json"),
                before=before,
            )
            session.commit()
        return view

    # What the labels are for

    def export(self, name: str) -> Iterator[dict[str, Any]]:
        """One JSON object per label, with its item's prompt and answers."""
        for item in self._all_items(name):
            for label in item.labels:
                yield {
                    "queue": name,
                    "item": item.id,
                    "source_id": item.source_id,
                    "prompt": item.prompt,
                    "output": item.output,
                    "baseline_output": item.baseline_output,
                    "reference": item.reference,
                    "rater": label.rater,
                    "value": label.value,
                    "comment": label.comment,
                    "created_at": label.created_at.isoformat(),
                }

    def register(self, name: str, dataset: str, *, actor: str) -> tuple[DatasetVersion, bool, int]:
        """The labelled items as eval cases (messages, the answer and its labels under metadata),
        a dataset version of their own: a gold set to check a judge or a metric against."""
        rows = 0
        with tempfile.TemporaryDirectory(prefix="evalhub-labels-") as work:
            path = Path(work) / f"{dataset}.jsonl"
            with path.open("w", encoding="utf-8") as handle:
                for item in self._all_items(name):
                    if not item.labels:
                        continue
                    case: dict[str, Any] = {"id": item.source_id, "messages": item.prompt}
                    if item.reference is not None:
                        case["expected"] = item.reference
                    case["metadata"] = {
                        "annotation_queue": name,
                        "output": item.output,
                        "baseline_output": item.baseline_output,
                        "labels": [
                            {"rater": label.rater, "value": label.value, "comment": label.comment}
                            for label in item.labels
                        ],
                    }
                    handle.write(json.dumps(case, ensure_ascii=False) + "\n")
                    rows += 1
            if rows == 0:
                raise invalid(f"annotation queue {name!r} has no labels yet")
            version, created = self.platform.registry.add_dataset_version(
                dataset,
                path,
                format=DatasetFormat.EVAL,
                filename=path.name,
                create=True,
                actor=actor,
            )
        return version, created, rows

    def agreement(self, name: str) -> AgreementReport:
        queue = self.get(name)
        items = list(self._all_items(name))
        judges: dict[str, list[Pair]] = {}
        by_rater: dict[str, dict[int, str]] = {}
        for item in items:
            for label in item.labels:
                by_rater.setdefault(label.rater, {})[item.id] = label.value
                for judge, score in item.judges.items():
                    verdict = _judge_verdict(queue, score)
                    judges.setdefault(judge, []).append(Pair(item.id, verdict, label.value))
        rater_rows = []
        for left, right in combinations(sorted(by_rater), 2):
            common = sorted(by_rater[left].keys() & by_rater[right].keys())
            if common:
                pairs = [Pair(i, by_rater[left][i], by_rater[right][i]) for i in common]
                rater_rows.append(_row(left, right, pairs))
        return AgreementReport(
            queue=name,
            method=METHOD,
            judges=[_row(judge, "humans", pairs) for judge, pairs in sorted(judges.items())],
            raters=rater_rows,
        )

    # Internals

    def _all_items(self, name: str) -> Iterator[Item]:
        token: str | None = None
        while True:
            page = self.items(name, limit=500, page_token=token)
            yield from page.data
            token = page.next_page_token
            if token is None:
                return

    def _run_items(self, body: QueueCreate, rng: random.Random) -> Iterator[AnnotationItemRow]:
        assert body.eval_run is not None
        evals = EvalService(self.platform)
        run = evals.store.run(body.eval_run)
        suite = evals.suite(body.eval_run)
        if suite is None:
            raise invalid(
                f"eval run {body.eval_run} was imported and holds no case inputs; draw the queue "
                "from a run that evalhub ran (evalhub eval run SUITE --model REF)"
            )
        cases = {case.id: case for case in suite.cases}
        # A rubric judge grades what a scale or labels queue asks; a pairwise judge, a choice.
        mode = "pairwise" if body.kind == "pairwise" else "rubric"
        judges = [
            name
            for name, summary in run.metrics.items()
            if summary.spec.name == "llm_judge"
            and summary.spec.options.get("mode", "rubric") == mode
        ]
        baseline: dict[str, str] = {}
        if body.baseline_run is not None:
            other = evals.store.run(body.baseline_run)
            baseline = {r.case_id: r.generations[0].output for r in other.results if r.generations}
        results = [r for r in run.results if r.generations and r.case_id in cases]
        if body.baseline_run is not None:
            results = [r for r in results if r.case_id in baseline]
            if not results:
                raise invalid(f"runs {body.eval_run} and {body.baseline_run} share no cases")
        if body.sample is not None and body.sample < len(results):
            picked = sorted(rng.sample(range(len(results)), body.sample))
            results = [results[i] for i in picked]
        if len(results) > MAX_ITEMS:
            raise invalid(f"a queue holds at most {MAX_ITEMS} items: give a smaller sample")
        for result in results:
            case = cases[result.case_id]
            scores = {
                judge: result.scores[judge].value
                for judge in judges
                if judge in result.scores and result.scores[judge].value is not None
            }
            yield AnnotationItemRow(
                queue_id=0,
                position=0,
                source_id=result.case_id,
                prompt=suite.messages_for(case),
                output=result.generations[0].output,
                other=baseline.get(result.case_id),
                swapped=body.baseline_run is not None and rng.random() < 0.5,
                reference=case.expected_text or None,
                judges=scores,
                details={"tags": result.tags, "run": body.eval_run},
            )

    def _traffic_items(self, body: QueueCreate, rng: random.Random) -> list[AnnotationItemRow]:
        assert body.deployment is not None
        DeploymentService(self.platform).get(body.deployment)
        query = select(TrafficRow.id).where(
            *answered(body.deployment, arm=body.arm, since=body.since, until=body.until)
        )
        with Session(self.platform.engine) as session:
            pool = list(
                session.exec(query.order_by(col(TrafficRow.created_at).desc()).limit(TRAFFIC_POOL))
            )
            chosen = set(rng.sample(pool, min(body.sample or 100, len(pool))))
            rows = session.exec(
                select(TrafficRow)
                .where(col(TrafficRow.id).in_(chosen))
                .order_by(col(TrafficRow.created_at))
            ).all()
            scores = {
                s.request_id: s.score
                for s in session.exec(
                    select(OnlineScoreRow).where(
                        col(OnlineScoreRow.request_id).in_(chosen),
                        OnlineScoreRow.metric == "llm_judge",
                    )
                )
            }
        return [
            AnnotationItemRow(
                queue_id=0,
                position=0,
                source_id=row.id,
                prompt=_prompt(prompt_case(row)),
                output=row.response_text or "",
                judges={"llm_judge": scores[row.id]} if scores.get(row.id) is not None else {},
                details={"arm": row.arm, "version": row.version, "at": row.created_at.isoformat()},
            )
            for row in rows
        ]

    def _queue(self, session: Session, row: AnnotationQueueRow) -> Queue:
        labels = select(AnnotationLabelRow).where(AnnotationLabelRow.queue_id == row.id)
        count = session.exec(select(func.count()).select_from(labels.subquery())).one()
        labelled = session.exec(
            select(func.count(func.distinct(AnnotationLabelRow.item_id))).where(
                AnnotationLabelRow.queue_id == row.id
            )
        ).one()
        raters = session.exec(
            select(AnnotationLabelRow.rater)
            .where(AnnotationLabelRow.queue_id == row.id)
            .distinct()
            .order_by(col(AnnotationLabelRow.rater))
        ).all()
        return Queue(
            name=row.name,
            description=row.description,
            kind=row.kind,
            question=row.rubric.get("question", ""),
            choices=_choices(row),
            source=row.source,
            items=_count_items(session, row),
            labelled=int(labelled),
            labels=int(count),
            raters=list(raters),
            created_at=row.created_at,
            created_by=row.created_by,
        )

    def _record(
        self,
        session: Session,
        actor: str,
        action: str,
        resource: str,
        after: dict[str, Any] | None,
        *,
        before: dict[str, Any] | None = None,
    ) -> None:
        self.platform.events.record(
            session,
            Mutation(
                actor=actor,
                action=action,
                resource=f"annotations/{resource}",
                before=before,
                after=after,
            ),
        )


def _queue_row(session: Session, name: str) -> AnnotationQueueRow:
    row = session.exec(select(AnnotationQueueRow).where(AnnotationQueueRow.name == name)).first()
    if row is None:
        raise not_found(f"no annotation queue {name!r}")
    return row


def _count_items(session: Session, queue: AnnotationQueueRow) -> int:
    return int(
        session.exec(select(func.count()).where(AnnotationItemRow.queue_id == queue.id)).one()
    )


def _choices(queue: AnnotationQueueRow) -> list[str]:
    if queue.kind == "scale":
        low, high = queue.rubric["scale"]
        return [str(point) for point in range(low, high + 1)]
    if queue.kind == "labels":
        return list(queue.rubric["labels"])
    return list(PAIRWISE)


def _value(queue: AnnotationQueueRow, item: AnnotationItemRow, given: str | int) -> str:
    """The label as stored: pairwise a/b resolved to candidate/baseline through the item's order."""
    text = str(given).strip()
    if queue.kind == "pairwise":
        shown = {"a": "baseline" if item.swapped else "candidate", "tie": "tie"}
        shown["b"] = "candidate" if item.swapped else "baseline"
        if text.lower() not in shown:
            raise invalid("a pairwise label is a (the first answer), b (the second) or tie")
        return shown[text.lower()]
    choices = _choices(queue)
    if text not in choices:
        raise invalid(f"a label of {queue.name!r} is one of: {', '.join(choices)}")
    return text


def _judge_verdict(queue: Queue, score: float) -> str:
    """A judge's 0-1 score in the queue's terms: the nearest scale point or label (worst first);
    for pairwise, above a half prefers the candidate, below the baseline, a half is a tie."""
    if queue.kind == "pairwise":
        return "candidate" if score > 0.5 else "baseline" if score < 0.5 else "tie"
    choices = queue.choices
    return choices[min(len(choices) - 1, max(0, round(score * (len(choices) - 1))))]


def _prompt(case: Case) -> list[dict[str, Any]]:
    if case.messages:
        return [m.model_dump() for m in case.messages]
    return [{"role": "user", "content": case.input or ""}]


def _labels_of(session: Session, item_ids: list[int]) -> dict[int, list[Label]]:
    labels: dict[int, list[Label]] = {}
    if item_ids:
        for row in session.exec(
            select(AnnotationLabelRow)
            .where(col(AnnotationLabelRow.item_id).in_(item_ids))
            .order_by(col(AnnotationLabelRow.id))
        ):
            labels.setdefault(row.item_id, []).append(_label(row))
    return labels


def _label(row: AnnotationLabelRow) -> Label:
    return Label(
        item=row.item_id,
        rater=row.rater,
        value=row.value,
        comment=row.comment,
        created_at=row.created_at,
    )


def _item(row: AnnotationItemRow, labels: list[Label]) -> Item:
    assert row.id is not None
    return Item(
        id=row.id,
        position=row.position,
        source_id=row.source_id,
        prompt=row.prompt,
        reference=row.reference,
        output=row.output,
        baseline_output=row.other,
        judges=row.judges,
        details=row.details,
        labels=labels,
    )


def _to_rate(queue: AnnotationQueueRow, row: AnnotationItemRow) -> ItemToRate:
    assert row.id is not None
    pairwise = queue.kind == "pairwise"
    first, second = (row.other, row.output) if row.swapped else (row.output, row.other)
    return ItemToRate(
        id=row.id,
        position=row.position,
        source_id=row.source_id,
        prompt=row.prompt,
        reference=row.reference,
        output=None if pairwise else row.output,
        a=first if pairwise else None,
        b=second if pairwise else None,
    )


def _row(left: str, right: str, pairs: list[Pair]) -> AgreementRow:
    return AgreementRow(left=left, right=right, **agreement(pairs).to_dict())
