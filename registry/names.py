"""Names and model references: `name` (latest ready), `name/3` (a version), `name@alias`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import invalid
from registry.limits import MAX_INT64

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,127}"
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_REF = re.compile(rf"(?P<name>{NAME_PATTERN})(?:/(?P<version>[0-9]+)|@(?P<alias>{ALIAS_PATTERN}))?")

#: Aliases whose moves need the admin role.
PROTECTED_ALIASES = frozenset({"production"})


def check_name(name: str, what: str = "model") -> str:
    if not _NAME.fullmatch(name or ""):
        raise invalid(
            f"invalid {what} name {name!r}: use 1-128 characters from a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias or ""):
        raise invalid(
            f"invalid alias {alias!r}: use a lowercase letter, then up to 63 of a-z, 0-9, '_' and '-'"
        )
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference; exactly one of `version` and `alias` is set, or neither (latest)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(ref: str) -> Ref:
    match = _REF.fullmatch((ref or "").strip())
    if not match:
        raise invalid(
            f"invalid reference {ref!r}: write 'name' (latest ready version), 'name/3' (version 3) "
            "or 'name@alias'"
        )
    version = match["version"]
    if version is not None and not 1 <= int(version) <= MAX_INT64:
        raise invalid(f"invalid reference {ref!r}: versions are numbered from 1 to {MAX_INT64}")
    return Ref(match["name"], int(version) if version else None, match["alias"])
