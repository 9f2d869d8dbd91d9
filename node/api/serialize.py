"""Plain JSON shapes of the admin objects (shared by the API and the console's pages)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from node.orchestration.eta import Eta
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


def iso_utc(at: float) -> str:
    """ISO-8601 in UTC, to the second (``2026-12-04T14:02:00Z``)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def eta_json(eta: Eta | None) -> dict[str, Any] | None:
    if eta is None:
        return None
    return {
        "estimated_start": iso_utc(eta.estimated_start),
        "estimated_finish": iso_utc(eta.estimated_finish),
        "seconds_to_finish": round(eta.seconds_to_finish, 3),
        "basis": eta.basis,
    }


def job_json(
    job: Job,
    info: dict[str, str] | None = None,
    etas: Mapping[int, Eta | None] | None = None,
) -> dict[str, Any]:
    """``etas``: the queue's estimates (:meth:`AdminService.etas`); with them the job gets
    ``eta`` (None for an ended job or one that cannot be estimated)."""
    data = asdict(job)
    data["destinations"] = list(job.destinations)
    data["pending_destinations"] = list(job.pending_destinations)
    data["result_dir"] = str(job.result_dir) if job.result_dir else None
    data["duration_seconds"] = (
        job.finished_at - job.started_at if job.finished_at and job.started_at else None
    )
    if info is not None:
        data["series"] = info
    if etas is not None:
        data["eta"] = eta_json(etas.get(job.id))
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
