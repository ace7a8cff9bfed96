"""An LLM as judge, over any OpenAI-compatible endpoint.

Two modes. `rubric`: the judge grades one answer against criteria on an integer scale and must
end with `SCORE: <n>`. `pairwise`: the judge compares the answer with the baseline's, asked twice
with positions swapped; only a verdict both orders agree on counts, anything else is a tie,
which cancels the judge's position bias. A verdict that does not parse is recorded as
unparseable (value None), never guessed. Prompts carry a version that is part of the cache key.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from evalhub.eval.cache import GenerationCache, cache_key
from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, ScoringContext
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Aggregate, Score

RUBRIC_PROMPT_VERSION = "rubric-v1"
PAIRWISE_PROMPT_VERSION = "pairwise-v1"

_SCORE_LINE = re.compile(r"^SCORE:\s*(-?\d+)$")
_VERDICT_LINE = re.compile(r"^VERDICT:\s*(A|B|TIE)$")

RUBRIC_SYSTEM = (
    "You are a strict, fair evaluator. Judge only against the criteria. Explain your reasoning "
    "briefly, then end with one final line exactly of the form `SCORE: <integer>`."
)
PAIRWISE_SYSTEM = (
    "You are a strict, fair evaluator comparing two responses to the same request. Ignore their "
    "order and length. Explain your reasoning briefly, then end with one final line exactly "
    "`VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`."
)


def question_text(case: Case) -> str:
    """What the model was asked: the input, or the last user message."""
    if case.input is not None:
        return case.input
    for message in reversed(case.messages or []):
        if message.role == "user":
            return message.content
    return ""


def rubric_messages(case: Case, output: str, criteria: str, low: int, high: int) -> list[dict]:
    reference = case.expected_text
    user = (
        f"Criteria:\n{criteria}\n\nRequest:\n{question_text(case)}\n\n"
        + (f"Reference answer:\n{reference}\n\n" if reference else "")
        + f"Response to grade:\n{output}\n\n"
        f"Grade the response from {low} (worst) to {high} (best). "
        f"End with the line `SCORE: <integer from {low} to {high}>`."
    )
    return [{"role": "system", "content": RUBRIC_SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(case: Case, first: str, second: str, criteria: str) -> list[dict]:
    user = (
        f"Criteria:\n{criteria}\n\nRequest:\n{question_text(case)}\n\n"
        f"Response A:\n{first}\n\nResponse B:\n{second}\n\n"
        "Which response is better? End with `VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`."
    )
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_rubric(text: str, low: int, high: int) -> tuple[int | None, str]:
    """(score, reasoning); the score is None unless the last line is `SCORE: n` within range."""
    match = _SCORE_LINE.match(_last_line(text))
    reasoning = text.strip().rsplit("\n", 1)[0] if "\n" in text.strip() else ""
    if match is None:
        return None, text.strip()
    value = int(match.group(1))
    if not low <= value <= high:
        return None, text.strip()
    return value, reasoning


def parse_verdict(text: str) -> str | None:
    match = _VERDICT_LINE.match(_last_line(text))
    return match.group(1) if match else None


class JudgeClient:
    """Calls the judge endpoint with retries and backoff, through a cache when given one."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        *,
        temperature: float,
        max_tokens: int,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        cache: GenerationCache | None,
        client: Any = None,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache = cache
        self.calls = 0
        if client is None:
            from openai import OpenAI

            # Retries are ours (with backoff we control and count), so the SDK's are off.
            client = OpenAI(
                base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s
            )
        self._client = client

    def complete(self, messages: list[dict], prompt_version: str) -> str:
        key = cache_key(
            kind="judge",
            prompt_version=prompt_version,
            base_url=self.base_url,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            messages=messages,
        )
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return str(cached["text"])
        text = self._call(messages)
        if self.cache is not None:
            self.cache.put(key, {"text": text})
        return text

    def _call(self, messages: list[dict]) -> str:
        import openai

        retryable = (
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.RateLimitError,
            openai.InternalServerError,
        )
        for attempt in range(self.max_retries + 1):
            try:
                self.calls += 1
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
                return response.choices[0].message.content or ""
            except retryable:
                if attempt == self.max_retries:
                    raise
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")


@register_metric("llm_judge", runtime_options=("api_key", "cache", "client"))
def llm_judge(
    base_url: str,
    model: str,
    mode: str = "rubric",
    criteria: str = "Correct, complete and helpful answer to the request.",
    scale: tuple[int, int] = (1, 5),
    prompt_version: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 512,
    timeout_s: float = 60.0,
    max_retries: int = 3,
    backoff_s: float = 0.5,
    concurrency: int = 4,
    api_key: str | None = None,
    cache: GenerationCache | None = None,
    client: Any = None,
) -> Metric:
    if mode not in ("rubric", "pairwise"):
        raise ValueError("mode must be 'rubric' or 'pairwise'")
    low, high = int(scale[0]), int(scale[1])
    if low >= high:
        raise ValueError("scale must be (low, high) with low < high")
    version = prompt_version or (
        RUBRIC_PROMPT_VERSION if mode == "rubric" else PAIRWISE_PROMPT_VERSION
    )
    judge = JudgeClient(
        base_url,
        model,
        api_key,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        max_retries=max_retries,
        backoff_s=backoff_s,
        cache=cache,
        client=client,
    )

    def rubric(output: str, case: Case, context: ScoringContext) -> Score:
        text = judge.complete(rubric_messages(case, output, criteria, low, high), version)
        value, reasoning = parse_rubric(text, low, high)
        if value is None:
            return Score(value=None, explanation="unparseable verdict", details={"verdict": text})
        return Score(
            value=(value - low) / (high - low),
            explanation=reasoning,
            details={"raw_score": value, "verdict": text},
        )

    def pairwise(output: str, case: Case, context: ScoringContext) -> Score:
        baseline = context.baseline_outputs.get(case.id)
        if baseline is None:
            return Score(value=None, explanation="no baseline answer for this case")
        first = judge.complete(pairwise_messages(case, output, baseline, criteria), version)
        second = judge.complete(pairwise_messages(case, baseline, output, criteria), version)
        verdicts = parse_verdict(first), parse_verdict(second)
        details: dict[str, Any] = {"candidate_first": first, "baseline_first": second}
        if None in verdicts:
            return Score(value=None, explanation="unparseable verdict", details=details)
        details["verdicts"] = list(verdicts)
        if verdicts == ("A", "B"):
            return Score(value=1.0, explanation="win: preferred in both orders", details=details)
        if verdicts == ("B", "A"):
            return Score(
                value=0.0, explanation="loss: baseline preferred in both orders", details=details
            )
        return Score(
            value=0.5, explanation=f"tie: verdicts {verdicts[0]}, {verdicts[1]}", details=details
        )

    judge_one = rubric if mode == "rubric" else pairwise

    def score(outputs: list[str], cases: list[Case], context: ScoringContext) -> list[Score]:
        def run(pair: tuple[str, Case]) -> Score:
            try:
                return judge_one(pair[0], pair[1], context)
            except Exception as error:
                return Score(value=None, explanation=f"judge call failed: {error}")

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(run, zip(outputs, cases, strict=True)))

    def aggregate(
        scores: list[Score], outputs: list[str], cases: list[Case], context: ScoringContext
    ) -> Aggregate:
        values = [score.value for score in scores if score.value is not None]
        details = {
            "unparseable": float(sum(s.explanation == "unparseable verdict" for s in scores))
        }
        if mode == "pairwise":
            details.update(
                wins=float(values.count(1.0)),
                ties=float(values.count(0.5)),
                losses=float(values.count(0.0)),
            )
        mean = sum(values) / len(values) if values else None
        return Aggregate(value=mean, count=len(values), details=details)

    return Metric(score, aggregate)
