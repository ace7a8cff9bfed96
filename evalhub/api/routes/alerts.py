"""Alert rules, the alerts they fired, and each alert's webhook deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from evalhub.api.deps import Editor, Limit, PlatformDep, Viewer
from evalhub.monitoring.alerts import Alert, AlertDetail, AlertRule, AlertRuleCreate, AlertService
from registry.entities import Page
from registry.limits import MAX_INT64

router = APIRouter()

RuleName = Annotated[str, Path(max_length=128)]


# The rule routes come before /alerts/{alert_id}, which would otherwise take "rules" for an id.
@router.post("/alerts/rules", status_code=201, tags=["alerts"])
def create_alert_rule(body: AlertRuleCreate, platform: PlatformDep, principal: Editor) -> AlertRule:
    """A threshold on one value of a deployment over a trailing window, checked on every
    monitor pass; what fires is stored and, with a webhook_url, POSTed there (signed with the
    secret when one is given)."""
    return AlertService(platform).create_rule(body, actor=principal.name)


@router.get("/alerts/rules", tags=["alerts"])
def list_alert_rules(
    platform: PlatformDep,
    _: Viewer,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
) -> list[AlertRule]:
    """Secrets are never shown; `has_secret` says whether there is one."""
    return AlertService(platform).rules(deployment)


@router.delete("/alerts/rules/{name}", status_code=204, tags=["alerts"])
def delete_alert_rule(name: RuleName, platform: PlatformDep, principal: Editor) -> Response:
    """The rule's alerts stay, as history."""
    AlertService(platform).delete_rule(name, actor=principal.name)
    return Response(status_code=204)


@router.get("/alerts", tags=["alerts"])
def list_alerts(
    platform: PlatformDep,
    _: Viewer,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    rule: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 100,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[Alert]:
    """Fired alerts, newest first."""
    return AlertService(platform).search(
        deployment=deployment, rule=rule, limit=limit, page_token=page_token
    )


@router.get("/alerts/{alert_id}", tags=["alerts"])
def get_alert(
    alert_id: Annotated[int, Path(ge=1, le=MAX_INT64)], platform: PlatformDep, _: Viewer
) -> AlertDetail:
    """An alert with its evidence and every webhook attempt."""
    return AlertService(platform).get(alert_id)
