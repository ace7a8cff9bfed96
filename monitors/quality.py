"""How each deployment arm and version is doing: traffic, errors, latency, tokens, cost, online
metric scores and user feedback, per group and optionally per time bucket.

Percentiles interpolate linearly between order statistics (numpy's default), so a handful of
requests still gives a number. A request failed when its status is >= 400 or it records an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

GROUP_KEYS = ("deployment", "arm", "version")
TRAFFIC_COLUMNS = (
    "request_id",
    "created_at",
    *GROUP_KEYS,
    "status",
    "error",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost",
)


@dataclass(frozen=True)
class ScoreSummary:
    mean: float
    count: int


@dataclass(frozen=True)
class QualityRow:
    deployment: str | None
    arm: str | None
    version: str | None
    bucket: datetime | None
    """Start of the time bucket (UTC); None when not bucketed."""
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None
    cost: float
    metrics: dict[str, ScoreSummary]
    """Online metric name -> mean score and number of scored requests."""
    feedback_requests: int
    feedback_rate: float
    """Share of the requests with any feedback."""
    feedback: dict[str, ScoreSummary]

    def to_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["bucket"] = None if self.bucket is None else self.bucket.isoformat()
        return summary


@dataclass(frozen=True)
class DailyCost:
    deployment: str | None
    arm: str | None
    version: str | None
    day: date
    """The UTC day."""
    cost: float
    requests: int
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "day": self.day.isoformat()}


def quality(
    traffic: pd.DataFrame,
    scores: pd.DataFrame | None = None,
    feedback: pd.DataFrame | None = None,
    *,
    bucket: str | None = None,
) -> list[QualityRow]:
    """One row per deployment, arm and version, and per `bucket` (a pandas frequency such as
    "1h" or "1D") when given, in the order of those keys."""
    frame = _traffic(traffic)
    keys = list(GROUP_KEYS)
    if bucket is not None:
        try:
            frame["bucket"] = frame["created_at"].dt.floor(bucket)
        except ValueError as error:
            raise ValueError(
                f"bucket must be a pandas frequency such as '1h', got {bucket!r}"
            ) from error
        keys.append("bucket")
    scores = _named_scores(scores, "scores", "metric")
    feedback = _named_scores(feedback, "feedback", "name")
    rows = []
    for key, group in frame.groupby(keys, dropna=False, sort=True):
        values = dict(zip(keys, key, strict=True))
        failed = (group["status"] >= 400) | group["error"].notna()
        requests = len(group)
        ids = group["request_id"]
        with_feedback = feedback[feedback["request_id"].isin(ids)]
        rows.append(
            QualityRow(
                deployment=_key(values["deployment"]),
                arm=_key(values["arm"]),
                version=_key(values["version"]),
                bucket=values["bucket"].to_pydatetime() if bucket is not None else None,
                requests=requests,
                errors=int(failed.sum()),
                error_rate=float(failed.mean()),
                latency_p50_ms=_quantile(group["latency_ms"], 0.5),
                latency_p95_ms=_quantile(group["latency_ms"], 0.95),
                latency_p99_ms=_quantile(group["latency_ms"], 0.99),
                ttft_p50_ms=_quantile(group["ttft_ms"], 0.5),
                prompt_tokens=int(group["prompt_tokens"].sum()),
                completion_tokens=int(group["completion_tokens"].sum()),
                prompt_tokens_mean=_mean(group["prompt_tokens"]),
                completion_tokens_mean=_mean(group["completion_tokens"]),
                cost=float(group["cost"].sum()),
                metrics=_summaries(scores[scores["request_id"].isin(ids)], "metric"),
                feedback_requests=int(with_feedback["request_id"].nunique()),
                feedback_rate=with_feedback["request_id"].nunique() / requests,
                feedback=_summaries(with_feedback, "name"),
            )
        )
    return rows


def cost_per_day(traffic: pd.DataFrame) -> list[DailyCost]:
    """Cost, requests and tokens per deployment, arm, version and UTC day."""
    frame = _traffic(traffic)
    frame["day"] = frame["created_at"].dt.floor("1D")
    frame["tokens"] = frame["prompt_tokens"].fillna(0) + frame["completion_tokens"].fillna(0)
    grouped = frame.groupby([*GROUP_KEYS, "day"], dropna=False, sort=True).agg(
        cost=("cost", "sum"), requests=("request_id", "size"), tokens=("tokens", "sum")
    )
    return [
        DailyCost(
            deployment=_key(deployment),
            arm=_key(arm),
            version=_key(version),
            day=day.date(),
            cost=float(row.cost),
            requests=int(row.requests),
            tokens=int(row.tokens),
        )
        for (deployment, arm, version, day), row in grouped.iterrows()
    ]


def _traffic(traffic: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    missing = [column for column in TRAFFIC_COLUMNS if column not in traffic.columns]
    if missing:
        raise ValueError(f"the traffic frame lacks the columns {missing}")
    frame = traffic[list(TRAFFIC_COLUMNS)].copy()
    created_at = pd.to_datetime(frame["created_at"])
    # Naive timestamps are the gateway's UTC ones.
    if created_at.dt.tz is None:
        created_at = created_at.dt.tz_localize(UTC)
    frame["created_at"] = created_at.dt.tz_convert(UTC)
    for column in ("status", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _named_scores(values: pd.DataFrame | None, frame_name: str, key: str) -> pd.DataFrame:
    import pandas as pd

    columns = ["request_id", key, "score"]
    if values is None:
        return pd.DataFrame(columns=columns)
    missing = [column for column in columns if column not in values.columns]
    if missing:
        raise ValueError(f"the {frame_name} frame lacks the columns {missing}")
    return values[columns]


def _summaries(values: pd.DataFrame, key: str) -> dict[str, ScoreSummary]:
    grouped = values.groupby(key)["score"].agg(["mean", "count"])
    return {
        str(name): ScoreSummary(mean=float(row["mean"]), count=int(row["count"]))
        for name, row in grouped.iterrows()
        if row["count"] > 0
    }


def _quantile(values: pd.Series, quantile: float) -> float | None:
    present = values.dropna()
    return float(np.quantile(present, quantile)) if len(present) else None


def _mean(values: pd.Series) -> float | None:
    present = values.dropna()
    return float(present.mean()) if len(present) else None


def _key(value: Any) -> str | None:
    """A group key as the row holds it: pandas reads a missing one as NaN."""
    import pandas as pd

    return None if pd.isna(value) else str(value)
