"""What every page starts with: the API client of this browser session, and the login box.

The server and token come from EVALHUB_URL and EVALHUB_TOKEN (what `evalhub dashboard` sets);
a token typed into the login box replaces the environment's for this session. A bad or missing
token shows the API's message and the box, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from dashboard.client import Api, ApiError
from dashboard.models import Principal

_URL = "evalhub_url"
_TOKEN = "evalhub_token"
_WHO = "evalhub_principal"
_API = "evalhub_api"


def connect() -> tuple[Api, Principal]:
    """The session's client and who it is; stops the page at the login box when it has none."""
    url = st.session_state.get(_URL) or os.environ.get("EVALHUB_URL") or "http://127.0.0.1:8000"
    token = st.session_state.get(_TOKEN) or os.environ.get("EVALHUB_TOKEN")
    api = _client(url, token)
    problem = None
    if not token:
        problem = (
            "No API token: paste one below (an admin makes tokens with `evalhub token create`)."
        )
    else:
        try:
            principal = Principal.model_validate(api.get("/whoami"))
        except ApiError as error:
            problem = f"{url} refused the token: {error.message}" if error.status else error.message
        else:
            st.session_state[_WHO] = principal
            _sidebar(api, principal)
            return api, principal
    _login(url, problem)
    st.stop()
    raise AssertionError("unreachable")  # st.stop() ends the script run


def _client(url: str, token: str | None) -> Api:
    """One client (and its connection pool) per browser session and server, not one a rerun."""
    kept: Api | None = st.session_state.get(_API)
    if kept is not None and (kept.url, kept.token) == (url.rstrip("/"), token):
        return kept
    if kept is not None:
        kept.close()
    st.session_state[_API] = Api(url, token)
    return st.session_state[_API]


def _login(url: str, problem: str | None) -> None:
    st.title("evalhub")
    if problem:
        st.warning(problem)
    with st.form("login"):
        server = st.text_input("Server", value=url)
        token = st.text_input("API token", type="password", placeholder="ehk_…")
        if st.form_submit_button("Sign in", type="primary"):
            st.session_state[_URL] = server.strip()
            st.session_state[_TOKEN] = token.strip()
            st.rerun()


def _sidebar(api: Api, principal: Principal) -> None:
    with st.sidebar:
        st.caption(f"{api.url} · signed in as **{principal.name}** ({principal.role})")
        if st.button("Sign out", key="sign-out"):
            st.session_state[_TOKEN] = ""
            st.rerun()


def admin_button(principal: Principal, label: str, *, key: str, role: str = "admin") -> bool:
    """A button only `role` may press: shown to everyone, disabled with the reason for others."""
    allowed = principal.is_admin if role == "admin" else principal.is_editor
    reason = None if allowed else f"needs the {role} role; you are {principal.role}"
    return st.button(label, key=key, disabled=not allowed, help=reason)


def attempt(action: Callable[[], Any], done: str) -> Any:
    """Runs an API call for a button: its success message, or the API's error message."""
    try:
        result = action()
    except ApiError as error:
        st.error(f"{error.message} (HTTP {error.status})")
        return None
    st.success(done)
    return result


def shown(read: Callable[[], Any]) -> Any:
    """Reads for a page part: the API's message instead of a traceback when it fails."""
    try:
        return read()
    except ApiError as error:
        st.error(f"{error.message} (HTTP {error.status})")
        return None
