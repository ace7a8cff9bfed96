"""API tokens and roles."""

from evalhub.auth.tokens import Principal, Role, TokenInfo, authenticate, create_token

__all__ = ["Principal", "Role", "TokenInfo", "authenticate", "create_token"]
