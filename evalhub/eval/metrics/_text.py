"""Text normalisation shared by the string-matching metrics."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Normaliser:
    """Applied identically to output and expected answer, so a match means what the options say."""

    ignore_case: bool = True
    collapse_whitespace: bool = True
    strip_punctuation: bool = False

    def __call__(self, text: str) -> str:
        if self.ignore_case:
            text = text.casefold()
        if self.strip_punctuation:
            text = text.translate(_PUNCTUATION)
        if self.collapse_whitespace:
            text = _WHITESPACE.sub(" ", text).strip()
        return text


def compile_pattern(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as error:
        raise ValueError(f"bad regular expression {pattern!r}: {error}") from error


def extract(pattern: re.Pattern[str], text: str) -> str | None:
    """The first match's first group (or the whole match when the pattern has no group)."""
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)
