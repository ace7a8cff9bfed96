"""Annotation queues, the item a rater labels next, and the agreement of judges with humans."""

from __future__ import annotations

from typing import Any

from dashboard.models import ReadModel


class Queue(ReadModel):
    name: str
    description: str = ""
    kind: str
    question: str
    choices: list[str]
    source: dict[str, Any]
    items: int
    labelled: int
    labels: int
    raters: list[str]

    @property
    def origin(self) -> str:
        if "eval_run" in self.source:
            baseline = self.source.get("baseline_run")
            return self.source["eval_run"] + (f" vs {baseline}" if baseline else "")
        return f"deployment {self.source.get('deployment')}"


class ItemToRate(ReadModel):
    id: int
    position: int
    source_id: str
    prompt: list[dict[str, Any]]
    reference: str | None = None
    output: str | None = None
    a: str | None = None
    b: str | None = None


class NextItem(ReadModel):
    item: ItemToRate | None = None
    done: int
    total: int


class AgreementRow(ReadModel):
    left: str
    right: str
    n: int
    items: int
    raw: float
    raw_low: float
    raw_high: float
    kappa: float | None = None
    kappa_low: float | None = None
    kappa_high: float | None = None


class AgreementReport(ReadModel):
    method: str
    judges: list[AgreementRow] = []
    raters: list[AgreementRow] = []
