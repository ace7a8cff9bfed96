"""Large tables are read a page at a time through the API: a page's next_page_token is kept in
the session, so "Next page" asks the server for the following page, never for everything."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

T = TypeVar("T")


def paged(key: str, read: Callable[[str | None], tuple[list[T], str | None]]) -> list[T]:
    """The current page of `read(page_token)`, with Previous/Next buttons under `key`."""
    stack: list[str | None] = st.session_state.setdefault(f"pages:{key}", [None])
    items, following = read(stack[-1])
    left, middle, right = st.columns([1, 2, 1])
    if left.button("Previous page", key=f"{key}:previous", disabled=len(stack) == 1):
        stack.pop()
        st.rerun()
    middle.caption(f"page {len(stack)}")
    if right.button("Next page", key=f"{key}:next", disabled=following is None):
        stack.append(following)
        st.rerun()
    return items
