"""The sizes a caller may send, in one place: what the columns hold and what stays readable.

PostgreSQL enforces VARCHAR lengths and 64-bit integers, SQLite enforces neither; checking here
gives both databases the same answer (a 422 that names the limit), never a database error.
Tag limits are MLflow's.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

MAX_INT64 = 2**63 - 1

Int64 = Annotated[int, Field(ge=-MAX_INT64 - 1, le=MAX_INT64)]
VersionNumber = Annotated[int, Field(ge=1, le=MAX_INT64)]
Description = Annotated[str, Field(max_length=10_000)]
Reason = Annotated[str, Field(max_length=1_000)]
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=250)]
TagValue = Annotated[str, StringConstraints(max_length=5_000)]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=100)]
