"""Plain JSON shapes of the admin objects (shared by the API and the console's pages)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from node.state.audit import AuditEntry
from node.state.catalog import SeriesView
from node.state.jobs import Job, JobEvent
from node.state.rules import RuleVersion, StoredRule, rule_definition
from node.state.series import SeriesRow
from node.state.users import ApiToken, User


def rule_json(stored: StoredRule) -> dict[str, Any]:
    return {
        "id": stored.id,
        "position": stored.position,
        "version": stored.version,
        "updated_at": stored.updated_at,
        "updated_by": stored.updated_by,
        **rule_definition(stored.rule),
    }


def version_json(version: RuleVersion) -> dict[str, Any]:
    return asdict(version)


def job_json(job: Job, info: dict[str, str] | None = None) -> dict[str, Any]:
    data = asdict(job)
    data["destinations"] = list(job.destinations)
    data["pending_destinations"] = list(job.pending_destinations)
    data["result_dir"] = str(job.result_dir) if job.result_dir else None
    data["duration_seconds"] = (
        job.finished_at - job.started_at if job.finished_at and job.started_at else None
    )
    if info is not None:
        data["series"] = info
    return data


def event_json(event: JobEvent) -> dict[str, Any]:
    return asdict(event)


def series_json(row: SeriesRow, info: dict[str, str] | None = None) -> dict[str, Any]:
    data = asdict(row)
    if info is not None:
        data.update(info)
    return data


def series_view_json(view: SeriesView) -> dict[str, Any]:
    return {**series_json(view.series, view.info), "jobs": view.jobs}


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return asdict(entry)


def user_json(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role,
        "created_at": user.created_at,
        "disabled": user.disabled,
    }


def token_json(token: ApiToken) -> dict[str, Any]:
    return asdict(token)
