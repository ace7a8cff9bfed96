"""The dashboard's read models of the API's JSON: one module per resource it shows.

Written for the dashboard (they import nothing from evalhub): each keeps the fields a page
shows and ignores the rest, so a field the API adds breaks no page.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ReadModel(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Principal(ReadModel):
    """Who the dashboard's token is: its name and role (viewer, editor or admin)."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_editor(self) -> bool:
        return self.role in ("editor", "admin")


class Change(ReadModel):
    """A committed change of the API's event stream (`GET /api/v1/events`)."""

    id: int
    at: str
    actor: str
    action: str
    resource: str
