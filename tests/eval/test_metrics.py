from __future__ import annotations

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from evalhub.eval import Case, GenerationRecord, MetricError, create_metric, known_metrics
from evalhub.eval.metrics import Metric, ScoringContext, passed, per_case, register_metric

PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("a cat was sitting on the mat", "the cat sat on the mat"),
    ("dogs are running in the park today", "the dogs ran in the park"),
    ("completely unrelated words here", "the quick brown fox jumps over the lazy dog"),
    ("It is raining, cats and dogs!", "it rains cats and dogs"),
    ("", "an empty hypothesis"),
    ("the the the the", "the cat"),
    ("Running runners ran quickly", "the runner runs quick"),
]


def cases_for(references: list[object], **fields: object) -> list[Case]:
    return [
        Case(id=str(i), input="q", expected=ref, **fields)  # type: ignore[arg-type]
        for i, ref in enumerate(references)
    ]


def test_bleu_and_chrf_equal_sacrebleu_exactly() -> None:
    outputs = [hyp for hyp, _ in PAIRS]
    refs = [ref for _, ref in PAIRS]
    cases = cases_for(refs)
    bleu = create_metric("bleu")
    scores = bleu.score(outputs, cases)
    for score, (hyp, ref) in zip(scores, PAIRS, strict=True):
        assert score.value == sacrebleu.sentence_bleu(hyp, [ref]).score
    assert (
        bleu.aggregate(scores, outputs, cases).value == sacrebleu.corpus_bleu(outputs, [refs]).score
    )
    chrf = create_metric("chrf", word_order=2)
    scores = chrf.score(outputs, cases)
    for score, (hyp, ref) in zip(scores, PAIRS, strict=True):
        assert score.value == sacrebleu.sentence_chrf(hyp, [ref], word_order=2).score
    assert (
        chrf.aggregate(scores, outputs, cases).value
        == sacrebleu.corpus_chrf(outputs, [refs], word_order=2).score
    )


@pytest.mark.parametrize("name", ["rouge1", "rouge2", "rougeL"])
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_equals_rouge_score(name: str, use_stemmer: bool) -> None:
    outputs = [hyp for hyp, _ in PAIRS]
    cases = cases_for([ref for _, ref in PAIRS])
    scorer = RougeScorer([name], use_stemmer=use_stemmer)
    scores = create_metric(name, use_stemmer=use_stemmer).score(outputs, cases)
    for score, (hyp, ref) in zip(scores, PAIRS, strict=True):
        assert score.value == scorer.score(ref, hyp)[name].fmeasure


def test_stemming_changes_rouge() -> None:
    cases = cases_for(["the runner runs"])
    plain = create_metric("rouge1").score(["the runners running"], cases)[0].value
    stemmed = (
        create_metric("rouge1", use_stemmer=True).score(["the runners running"], cases)[0].value
    )
    assert stemmed is not None and plain is not None and stemmed > plain


@pytest.mark.parametrize(
    ("options", "output", "expected", "value"),
    [
        ({}, "  Paris ", "paris", 1.0),
        ({"ignore_case": False}, "Paris", "paris", 0.0),
        ({}, "New   York\n", "new york", 1.0),
        ({"collapse_whitespace": False}, "New  York", "New York", 0.0),
        ({}, "Paris.", "Paris", 0.0),
        ({"strip_punctuation": True}, "Paris!", "paris", 1.0),
        ({"extract_pattern": r"answer:\s*(\w+)"}, "I think... Answer: 42", "42", 0.0),
        ({"extract_pattern": r"(?i)answer:\s*(\w+)"}, "I think... Answer: 42", "42", 1.0),
        ({"extract_pattern": r"\d+"}, "there are 7 days", "7", 1.0),
        ({"extract_pattern": r"\d+"}, "no digits", "7", 0.0),
        ({}, "b", ["a", "B"], 1.0),
    ],
)
def test_exact_match_normalisation(
    options: dict, output: str, expected: object, value: float
) -> None:
    metric = create_metric("exact_match", **options)
    assert metric.binary
    assert metric.score([output], cases_for([expected]))[0].value == value


def test_json_schema_reports_the_failing_path() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["qty"],
                    "properties": {"qty": {"type": "integer", "minimum": 1}},
                },
            },
        },
        "required": ["name", "items"],
        "additionalProperties": False,
    }
    metric = create_metric("json_schema", schema=schema)
    outputs = [
        '{"name": "a", "items": [{"qty": 2}]}',
        '{"name": "a", "items": [{"qty": 2}, {"qty": 0}]}',
        '{"name": 3, "items": []}',
        '{"items": []}',
        '```json\n{"name": "a", "items": []}\n```',
        "not json",
        '{"name": "a", "items": [], "extra": 1}',
    ]
    scores = metric.score(outputs, cases_for([""] * len(outputs)))
    assert [s.value for s in scores] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert "$.items[1].qty" in scores[1].explanation and "minimum" in scores[1].explanation
    assert "$.name" in scores[2].explanation
    assert "'name' is a required property" in scores[3].explanation
    assert scores[5].explanation.startswith("not JSON")
    assert "extra" in scores[6].explanation


def test_json_schema_from_the_case_and_json_valid() -> None:
    case = Case(id="1", input="q", schema={"type": "array", "maxItems": 1})
    metric = create_metric("json_schema")
    assert metric.score(["[1, 2]"], [case])[0].value == 0.0
    assert metric.score(["[1]"], [case])[0].value == 1.0
    valid = create_metric("json_valid")
    assert [s.value for s in valid.score(["{}", "{", "[1]"], [case] * 3)] == [1.0, 0.0, 1.0]
    with pytest.raises(MetricError):
        create_metric("json_schema", schema={"type": "no-such-type"})


def test_contains_regex_required_sections() -> None:
    cases = cases_for(["Paris"])
    assert create_metric("contains").score(["It is paris."], cases)[0].value == 1.0
    assert (
        create_metric("contains", values=["a", "zz"], require="any").score(["abc"], cases)[0].value
        == 1.0
    )
    assert create_metric("contains", values=["a", "zz"]).score(["abc"], cases)[0].value == 0.0
    regex = create_metric("regex", pattern=r"^\d{3}-\d{4}$", full_match=True)
    assert [s.value for s in regex.score(["555-1234", "x555-1234"], cases * 2)] == [1.0, 0.0]
    markdown = "# Summary\ntext\n## Risks ##\nmore\n"
    sections = create_metric("required_sections", sections=["Summary", "Risks", "Next steps"])
    score = sections.score([markdown], cases)[0]
    assert score.value == pytest.approx(2 / 3) and "Next steps" in score.explanation
    keys = create_metric("required_sections", sections=["a", "b.c"], format="json")
    assert keys.score(['{"a": 1, "b": {"c": 2}}'], cases)[0].value == 1.0
    assert keys.score(['{"a": 1, "b": {}}'], cases)[0].value == 0.5


def test_latency_and_cost_from_records() -> None:
    records = [
        GenerationRecord(
            case_id=str(i),
            output="x",
            latency_s=float(i + 1),
            ttft_s=0.1 * (i + 1),
            prompt_tokens=1000,
            completion_tokens=500,
            model="m",
        )
        for i in range(100)
    ]
    cases = cases_for([""] * 100)
    context = ScoringContext(records=records)
    latency = create_metric("latency", statistic="p95")
    scores = latency.score(["x"] * 100, cases, context)
    aggregate = latency.aggregate(scores, ["x"] * 100, cases, context)
    assert aggregate.value == pytest.approx(95.05)
    assert aggregate.details["p50"] == pytest.approx(50.5)
    assert aggregate.details["ttft_p99"] == pytest.approx(9.901)
    assert not latency.higher_is_better and latency.scale is None
    cost = create_metric("cost", prices={"m": {"prompt": 2.0, "completion": 10.0}})
    scores = cost.score(["x"] * 100, cases, context)
    assert scores[0].value == pytest.approx((1000 * 2 + 500 * 10) / 1e6)
    aggregate = cost.aggregate(scores, ["x"] * 100, cases, context)
    assert aggregate.details["total"] == pytest.approx(100 * 0.007)
    unpriced = create_metric("cost", prices={}).score(["x"], cases[:1], ScoringContext(records[:1]))
    assert unpriced[0].value is None and "no price" in unpriced[0].explanation


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(MetricError) as error:
        create_metric("exact_mtach")
    message = str(error.value)
    assert "unknown metric 'exact_mtach'" in message
    for name in ("bleu", "exact_match", "json_schema", "llm_judge", "rougeL"):
        assert name in message
    assert set(known_metrics()) >= {"bleu", "chrf", "contains", "cost", "latency", "regex"}
    with pytest.raises(MetricError, match="options: ignore_case"):
        create_metric("exact_match", ignorecase=True)


@register_metric("test_length_at_most")
def length_at_most(limit: int = 10) -> Metric:
    return Metric(per_case(lambda output, case: passed(len(output) <= limit)), binary=True)


def shouting(threshold: float = 0.5) -> Metric:
    """A plain factory, used through its dotted path."""
    return Metric(per_case(lambda output, case: passed(output.isupper())))


def test_custom_metrics_record_their_options_and_rebuild() -> None:
    metric = create_metric("test_length_at_most", limit=3)
    assert metric.options == {"limit": 3}
    rebuilt = create_metric(metric.name, **metric.options)
    assert rebuilt.score(["abcd"], cases_for([""]))[0].value == 0.0
    dotted = create_metric("tests.eval.test_metrics:shouting", threshold=0.2)
    assert dotted.name == "tests.eval.test_metrics:shouting"
    assert dotted.options == {"threshold": 0.2}
    assert dotted.score(["HEY"], cases_for([""]))[0].value == 1.0
    with pytest.raises(MetricError, match="could not be loaded"):
        create_metric("tests.eval.test_metrics:nothing_here")
    with pytest.raises(MetricError, match="already registered"):
        register_metric("bleu")(shouting)


def test_judge_secrets_are_never_recorded() -> None:
    metric = create_metric("llm_judge", base_url="http://127.0.0.1:9/v1", model="j", api_key="sk-x")
    assert "api_key" not in metric.options and metric.options["model"] == "j"


def test_semantic_similarity_batched_and_cached() -> None:
    from evalhub.eval.metrics.semantic_similarity import (
        default_model_path,
        embedding_cache,
        load_model,
    )

    outputs = ["A man is playing a guitar.", "The stock market fell sharply today.", "hello"]
    refs = ["Someone plays the guitar.", "A man is playing a guitar.", "hello"]
    metric = create_metric("semantic_similarity")
    scores = metric.score(outputs, cases_for(refs))
    model = load_model(default_model_path())
    vectors = model.encode(outputs + refs, normalize_embeddings=True)
    for i, score in enumerate(scores):
        assert score.value == pytest.approx(float(vectors[i] @ vectors[i + 3]), abs=1e-5)
    assert scores[0].value > 0.6 > scores[1].value
    assert scores[2].value == pytest.approx(1.0, abs=1e-5)
    cached = len(embedding_cache(default_model_path()))
    again = metric.score(outputs, cases_for(refs))
    assert len(embedding_cache(default_model_path())) == cached
    assert [s.value for s in again] == [s.value for s in scores]


def test_semantic_similarity_scores_more_texts_than_the_cache_holds() -> None:
    from evalhub.eval.metrics.semantic_similarity import default_model_path, embedding_cache

    cache = embedding_cache(default_model_path())
    cache.clear()
    cache.max_items = 2  # fewer than one call's texts: the call evicts its own first entries
    try:
        outputs = [f"answer number {i}" for i in range(5)]
        scores = create_metric("semantic_similarity").score(outputs, cases_for(outputs))
        assert [s.value for s in scores] == pytest.approx([1.0] * 5, abs=1e-5)
        assert len(cache) == 2
    finally:
        cache.max_items = 200_000
        cache.clear()
