"""Is the current window of traffic still like the reference window?

Each column gets the test Evidently picks by default, because the right test depends on the
window size: a small window needs a significance test to tell drift from noise, while on a large
one every test is significant and a distance, which only flags shifts of some size, is the better
signal.

- text descriptors of `prompt` and `response` (characters, words, non-letter share, lines; see
  `monitors.descriptors`) and the numeric columns `latency_ms`, `prompt_tokens`,
  `completion_tokens`: two-sample Kolmogorov-Smirnov, drifted when p < 0.05, while the reference
  has at most 1,000 rows; above that the Wasserstein distance normed by the reference's standard
  deviation, drifted when >= 0.1. A numeric column with at most 5 distinct values is counted like a
  categorical one (chi-square, or Z-test for two values; Jensen-Shannon above 1,000 rows).
- categorical `arm` and `version`: chi-square (Z-test for two categories), drifted when p < 0.05,
  up to 1,000 reference rows; above that the Jensen-Shannon distance, drifted when >= 0.1.
- prompt embeddings, when the caller gives them: the ROC AUC of a classifier trained to tell
  reference from current embeddings (Evidently's "model" method, called directly: its
  `EmbeddingsDrift` metric runs t-SNE for a plot on every run). Drifted when the AUC exceeds 0.55
  and the 99% quantile of the AUC of a classifier that cannot tell them apart (the normal
  approximation of the Mann-Whitney statistic), so a small window does not alarm on chance.

The window has drifted when the share of drifted checks reaches `drift_share` (0.5, as in
Evidently's `DataDriftPreset`), or when the prompt embeddings drift on their own: a change of topic
can leave every length alone, and the embeddings are the one check that sees meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from monitors.descriptors import text_descriptors

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

ColumnKind = Literal["text_descriptor", "numeric", "categorical", "embedding"]

TEXT_COLUMNS = ("prompt", "response")
NUMERIC_COLUMNS = ("latency_ms", "prompt_tokens", "completion_tokens")
CATEGORICAL_COLUMNS = ("arm", "version")
REQUIRED_COLUMNS = TEXT_COLUMNS + NUMERIC_COLUMNS + CATEGORICAL_COLUMNS
EMBEDDING_COLUMN = "prompt_embedding"
MIN_EMBEDDINGS = 10


@dataclass(frozen=True)
class DriftOptions:
    drift_share: float = 0.5
    """Share of drifted checks at which the window counts as drifted."""
    numeric_method: str | None = None
    """An Evidently stattest name for numeric columns and text descriptors; None: its default."""
    numeric_threshold: float | None = None
    categorical_method: str | None = None
    """An Evidently stattest name for `arm` and `version`; None: its default."""
    categorical_threshold: float | None = None
    embedding_min_auc: float = 0.55
    embedding_alpha: float = 0.01
    """The chance an embedding check alarms on a window without drift."""

    def __post_init__(self) -> None:
        if not 0 < self.drift_share <= 1:
            raise ValueError(f"drift_share must be in (0, 1], got {self.drift_share}")
        if not 0 < self.embedding_alpha < 1:
            raise ValueError(f"embedding_alpha must be in (0, 1), got {self.embedding_alpha}")


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: ColumnKind
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class SkippedColumn:
    column: str
    kind: ColumnKind
    reason: str


@dataclass(frozen=True)
class DriftResult:
    columns: tuple[ColumnDrift, ...]
    skipped: tuple[SkippedColumn, ...]
    share_drifted: float
    drift_share: float
    embedding_drifted: bool | None
    """None when no embeddings were given."""
    drifted: bool
    reference_rows: int
    current_rows: int

    def column(self, name: str) -> ColumnDrift:
        for column in self.columns:
            if column.column == name:
                return column
        raise KeyError(f"no drift check for column {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_check(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    reference_embeddings: np.ndarray | None = None,
    current_embeddings: np.ndarray | None = None,
    options: DriftOptions | None = None,
) -> DriftResult:
    """Compares two windows of traffic frames column by column; see the module docstring."""
    options = options or DriftOptions()
    embeddings = _checked_embeddings(reference_embeddings, current_embeddings)
    reference_features, current_features, kinds, skipped = _features(reference, current)
    columns = [
        _drift(reference_features[column], current_features[column], kind, options)
        for column, kind in kinds.items()
    ]
    embedding_drifted: bool | None = None
    if embeddings is not None:
        embedding = _embedding_drift(*embeddings, options)
        columns.append(embedding)
        embedding_drifted = embedding.drifted
    share = sum(column.drifted for column in columns) / len(columns) if columns else 0.0
    return DriftResult(
        columns=tuple(columns),
        skipped=tuple(skipped),
        share_drifted=share,
        drift_share=options.drift_share,
        embedding_drifted=embedding_drifted,
        drifted=bool(columns) and (share >= options.drift_share or bool(embedding_drifted)),
        reference_rows=len(reference),
        current_rows=len(current),
    )


def drift_report_html(
    reference: pd.DataFrame, current: pd.DataFrame, *, options: DriftOptions | None = None
) -> str:
    """Evidently's self-contained HTML report of the column checks `drift_check` runs, with the
    same methods and thresholds.

    Built only when asked: Evidently draws every column's plots on each run, which is most of a
    report's cost. It leaves out the embeddings, whose widget costs a t-SNE fit per report.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    options = options or DriftOptions()
    reference_features, current_features, kinds, _ = _features(reference, current)
    metrics = []
    for column, kind in kinds.items():
        method, threshold = _method(kind, options)
        metrics.append(ValueDrift(column=column, method=method, threshold=threshold))
    definition = DataDefinition(
        numerical_columns=[column for column, kind in kinds.items() if kind != "categorical"],
        categorical_columns=[column for column, kind in kinds.items() if kind == "categorical"],
    )
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(current_features, data_definition=definition),
        reference_data=Dataset.from_pandas(reference_features, data_definition=definition),
    )
    return str(snapshot.get_html_str(as_iframe=False))


def _method(kind: ColumnKind, options: DriftOptions) -> tuple[str | None, float | None]:
    """The stattest and threshold the options set for a kind of column (None: Evidently's)."""
    if kind == "categorical":
        return options.categorical_method, options.categorical_threshold
    return options.numeric_method, options.numeric_threshold


def _drift(
    reference: pd.Series, current: pd.Series, kind: ColumnKind, options: DriftOptions
) -> ColumnDrift:
    """One column's check with the Evidently stattest that its `ValueDrift` metric runs, without
    the plots that metric draws on every run (Evidently is imported here: it is slow to)."""
    from evidently import ColumnType
    from evidently.legacy.calculations.stattests import get_stattest

    column_type = ColumnType.Categorical if kind == "categorical" else ColumnType.Numerical
    method, threshold = _method(kind, options)
    reference, current = reference.dropna(), current.dropna()
    stattest = get_stattest(reference, current, column_type, method)
    result = stattest(reference, current, column_type, threshold)
    return ColumnDrift(
        column=str(reference.name),
        kind=kind,
        method=str(stattest.display_name),
        score=float(result.drift_score),
        threshold=float(result.actual_threshold),
        drifted=bool(result.drifted),
    )


def _features(
    reference: pd.DataFrame, current: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, ColumnKind], list[SkippedColumn]]:
    """The checked columns of both windows, leaving out those entirely null in either."""
    for name, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise ValueError(f"the {name} window has no rows: drift needs traffic in both windows")
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(f"the {name} window lacks the traffic columns {missing}")
    reference_features, current_features = _feature_frame(reference), _feature_frame(current)
    kinds: dict[str, ColumnKind] = {}
    skipped: list[SkippedColumn] = []
    for column in reference_features.columns:
        kind = _kind(column)
        empty = [
            name
            for name, frame in (("reference", reference_features), ("current", current_features))
            if frame[column].isna().all()
        ]
        if empty:
            reason = f"entirely null in the {' and '.join(empty)} window"
            skipped.append(SkippedColumn(column=column, kind=kind, reason=reason))
        else:
            kinds[column] = kind
    return reference_features[list(kinds)], current_features[list(kinds)], kinds, skipped


def _feature_frame(traffic: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    texts = [text_descriptors(traffic[column], prefix=column) for column in TEXT_COLUMNS]
    numeric = traffic[list(NUMERIC_COLUMNS)].apply(pd.to_numeric, errors="coerce").astype(float)
    categorical = traffic[list(CATEGORICAL_COLUMNS)].map(
        lambda value: None if pd.isna(value) else str(value)
    )
    return pd.concat([*texts, numeric, categorical], axis=1).reset_index(drop=True)


def _kind(column: str) -> ColumnKind:
    if column in NUMERIC_COLUMNS:
        return "numeric"
    if column in CATEGORICAL_COLUMNS:
        return "categorical"
    return "text_descriptor"


def _checked_embeddings(
    reference: np.ndarray | None, current: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    if reference is None and current is None:
        return None
    if reference is None or current is None:
        raise ValueError("give embeddings for both windows, or for neither")
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    for name, array in (("reference", reference), ("current", current)):
        if array.ndim != 2 or len(array) < MIN_EMBEDDINGS:
            raise ValueError(
                f"{name}_embeddings must be a 2-D array of at least {MIN_EMBEDDINGS} rows, "
                f"got shape {array.shape}"
            )
    if reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"the embeddings differ in dimension: {reference.shape[1]} and {current.shape[1]}"
        )
    return reference, current


def _embedding_drift(
    reference: np.ndarray, current: np.ndarray, options: DriftOptions
) -> ColumnDrift:
    import pandas as pd
    from evidently.metrics.embeddings import ModelDriftMethod

    # Evidently's method holds out half of each window (test_size=0.5) to score its classifier.
    auc, _, _ = ModelDriftMethod()(pd.DataFrame(current), pd.DataFrame(reference))
    threshold = max(options.embedding_min_auc, _chance_auc_quantile(reference, current, options))
    return ColumnDrift(
        column=EMBEDDING_COLUMN,
        kind="embedding",
        method="domain classifier ROC AUC",
        score=float(auc),
        threshold=threshold,
        drifted=bool(auc > threshold),
    )


def _chance_auc_quantile(
    reference: np.ndarray, current: np.ndarray, options: DriftOptions
) -> float:
    """The AUC a classifier that cannot tell the windows apart exceeds with `embedding_alpha`
    chance, on the held-out half it is scored on."""
    positives, negatives = len(reference) / 2, len(current) / 2
    spread = np.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    return float(0.5 + NormalDist().inv_cdf(1 - options.embedding_alpha) * spread)
