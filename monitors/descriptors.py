"""Numbers that describe a text, so text columns can be checked for drift like numeric ones.

Computed with pandas rather than Evidently's descriptors: those count a missing response (a failed
request) as an empty text and fail on an empty one, while here a missing text stays missing, so a
change in the error rate does not read as a change in what the model writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas loads in 0.5 s: only the functions that use it import it
    import pandas as pd

DESCRIPTORS = ("chars", "words", "non_letter_share", "lines")


def text_descriptors(texts: pd.Series, prefix: str) -> pd.DataFrame:
    """Length in characters and words, share of characters that are neither letters nor
    whitespace (code, JSON, numbers), and line count; one column `<prefix>_<descriptor>` each."""
    import pandas as pd

    text = texts.astype("string")
    chars = text.str.len().astype(float)
    non_letters = text.str.count(r"[^\w\s]|[\d_]").astype(float)
    columns = {
        "chars": chars,
        "words": text.str.count(r"\S+").astype(float),
        # An empty text has no characters to share out: its share is 0, not undefined.
        "non_letter_share": pd.Series(
            np.where(chars > 0, non_letters / chars.where(chars > 0), 0.0), index=text.index
        ).where(text.notna()),
        "lines": (text.str.count("\n") + 1).astype(float),
    }
    return pd.DataFrame({f"{prefix}_{name}": column for name, column in columns.items()})
