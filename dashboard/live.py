"""Pages refresh themselves when something they show changes.

The server's change events (`GET /api/v1/events/history`, the paged form of the event stream)
are polled from a fragment every few seconds; a change under one of the page's resources reruns
the whole page. Streamlit reruns a script to change what it shows, so polling the history with
`after` is how a script follows the stream.
"""

from __future__ import annotations

import streamlit as st

from dashboard.client import Api, ApiError


def refresh_on_change(api: Api, *resources: str, every: float = 3.0) -> None:
    """Reruns the page when a change under one of `resources` (prefixes such as
    "deployments/chat" or "models"; none means any) commits after this run."""
    key = "live:" + "|".join(resources)
    try:
        st.session_state[key] = _latest(api, resources)
    except ApiError:
        return  # the page itself shows the API's error

    @st.fragment(run_every=every)
    def watch() -> None:
        try:
            latest = _latest(api, resources)
        except ApiError:
            return
        if latest > st.session_state.get(key, 0):
            st.session_state[key] = latest
            st.rerun(scope="app")

    watch()


def _latest(api: Api, resources: tuple[str, ...]) -> int:
    body = api.get("/events/history", resource=list(resources) or None, limit=1)
    return int(body["data"][0]["id"]) if body["data"] else 0
