"""First start of a fresh home: install an admin token so that someone can log in."""

from __future__ import annotations

from evalhub.auth.tokens import Role, create_token, has_tokens
from evalhub.platform import Platform


def ensure_admin_token(platform: Platform) -> str | None:
    """Returns a generated secret to print once; None when tokens exist or one was configured."""
    if has_tokens(platform.engine):
        return None
    configured = platform.settings.admin_token
    secret = configured.get_secret_value() if configured is not None else None
    _, created = create_token(
        platform.engine, "admin", Role.ADMIN, actor="evalhub serve", secret=secret
    )
    return None if configured is not None else created
