"""The admin REST API under ``/api`` (OpenAPI at ``/docs``).

Handlers only translate HTTP to :class:`~node.admin.service.AdminService`
calls and back; the CLI calls the same service functions.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field

from node.admin.destinations import destination_view, parse_destination
from node.admin.rules import subject_from_dicom_bytes, subject_from_json
from node.admin.service import AdminService
from node.api.auth import Principal
from node.api.serialize import (
    audit_json,
    event_json,
    job_json,
    rule_json,
    series_json,
    series_view_json,
    token_json,
    user_json,
    version_json,
)
from node.errors import InvalidInput
from node.orchestration.eta import no_estimate_reason
from node.state.dicom_audit import DicomAudit, EventType, parse_since
from node.state.jobs import CANCELLABLE, JOB_STATES

log = logging.getLogger(__name__)

Dependency = Callable[[Request], Awaitable[Principal]]


# -- request bodies (documented in OpenAPI) -----------------------------------------------


class RuleBody(BaseModel):
    """A routing rule, as in the YAML ``rules`` list; ``match`` may also be YAML text."""

    model_config = {"extra": "allow"}
    name: str = Field(examples=["chest-ct-lungs"])
    match: dict[str, Any] | str = Field(
        default_factory=dict,
        examples=[{"Modality": "CT", "SeriesDescription": {"regex": "(?i)chest"}}],
    )
    plugin: str = Field(examples=["ct_lungs"])
    send_to: list[str] = Field(default_factory=list)
    priority: int = 5
    enabled: bool = True


class ValidateBody(BaseModel):
    rule: dict[str, Any]
    rule_id: int | None = Field(None, description="the rule being edited, if any")


class OrderBody(BaseModel):
    order: list[int] = Field(description="every rule id, in the new order")


class TestBody(BaseModel):
    """What to test: a stored series or a header; which rules: the saved set with a change."""

    series_uid: str | None = None
    header: dict[str, Any] | None = Field(
        None, description='keywords ({"Modality": "CT"}) or the DICOM JSON model'
    )
    rule: dict[str, Any] | None = Field(None, description="an unsaved rule to include")
    rule_id: int | None = Field(None, description="the saved rule that `rule` replaces")
    calling_ae: str = ""
    called_ae: str = ""


class ReplayBody(BaseModel):
    days: float = Field(7, gt=0, le=3650)
    rule: dict[str, Any] | None = None
    rule_id: int | None = None
    rules: list[dict[str, Any]] | None = Field(None, description="a whole new rule set")
    remove_id: int | None = Field(None, description="replay as if this rule were deleted")


class RerunBody(BaseModel):
    plugin: str | None = None


class PriorityBody(BaseModel):
    priority: int = Field(ge=0, le=9)


class DestinationBody(BaseModel):
    """A destination of a registered kind (``ainode destinations kinds``): DIMSE without
    ``kind`` (``ae_title``, ``host``, ``port``), ``kind: dicomweb`` for STOW-RS (``url``,
    ``auth``, ``tls``), …; validated by ``parse_destination``."""

    model_config = {"extra": "allow"}
    kind: str | None = None
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    # Retry fields left out take the configuration's defaults (a day of retries).
    max_attempts: int | None = None
    backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None
    give_up_after_seconds: float | None = None
    probe_seconds: float | None = None
    # Left out: the kind's default (30 s for DIMSE and DICOMweb).
    timeout_seconds: float | None = None


class UserBody(BaseModel):
    username: str
    password: str
    role: str = "viewer"


class UserPatch(BaseModel):
    role: str | None = None
    password: str | None = None
    disabled: bool | None = None


class TokenBody(BaseModel):
    name: str = "api"
    #: Expire this many days after creation ...
    expires_in_days: float | None = Field(None, gt=0)
    #: ... or at this time (ISO 8601 with a time zone); neither: never expires.
    expires_at: datetime | None = None


def _test_payload(
    admin: AdminService, rules: list[Any], subject: Any, candidate: str | None
) -> dict[str, Any]:
    results = admin.test_rules(rules, subject)
    for item in results:
        item["candidate"] = item["rule"] == candidate
    return {
        "fires": [r["rule"] for r in results if r["fires"]],
        "results": results,
    }


def api_router(admin: AdminService, viewer: Dependency, editor: Dependency) -> APIRouter:
    """All ``/api`` routes; ``viewer``/``editor`` are the auth dependencies."""
    router = APIRouter(prefix="/api")
    Viewer = Annotated[Principal, Depends(viewer)]
    Editor = Annotated[Principal, Depends(editor)]

    @router.get("/me", tags=["users"])
    def me(principal: Viewer) -> dict[str, Any]:
        """The logged-in user, and the CSRF token the console sends with changes."""
        return {**user_json(principal.user), "via": principal.via, "csrf": principal.csrf_token}

    # -- rules ----------------------------------------------------------------------------

    @router.get("/rules", tags=["rules"])
    def list_rules(_: Viewer) -> list[dict[str, Any]]:
        """The rules the node applies, in order (the database is authoritative)."""
        return [rule_json(s) for s in admin.rules.stored()]

    @router.post("/rules", status_code=201, tags=["rules"])
    def create_rule(body: RuleBody, principal: Editor) -> dict[str, Any]:
        return rule_json(admin.create_rule(body.model_dump(exclude_none=True), principal.name))

    @router.post("/rules/validate", tags=["rules"])
    def validate_rule(body: ValidateBody, _: Viewer) -> dict[str, Any]:
        """Check a rule without saving it: 200 with ``valid`` and ``errors`` (by field)."""
        try:
            rule = admin.validate_rule(body.rule, rule_id=body.rule_id)
        except InvalidInput as exc:
            return {
                "valid": False,
                "message": str(exc),
                "errors": [{"field": f, "message": m} for f, m in exc.problems],
            }
        return {
            "valid": True,
            "errors": [],
            "conditions": [c.describe() for c in rule.conditions],
        }

    @router.post("/rules/order", tags=["rules"])
    def reorder_rules(body: OrderBody, principal: Editor) -> list[dict[str, Any]]:
        return [rule_json(s) for s in admin.reorder_rules(body.order, principal.name)]

    @router.post("/rules/test", tags=["rules"])
    def test_rules(body: TestBody, _: Viewer) -> dict[str, Any]:
        """Which rules would fire for a stored series or a JSON header.

        Give ``rule`` (and ``rule_id`` when editing) to test an unsaved change
        together with the saved rules.
        """
        if bool(body.series_uid) == bool(body.header):
            raise InvalidInput(
                "give either series_uid or header", [("series_uid", "one of series_uid, header")]
            )
        if body.series_uid:
            subject = admin.series_subject(body.series_uid)
        else:
            header = dict(body.header or {})
            header.setdefault("calling_ae", body.calling_ae)
            header.setdefault("called_ae", body.called_ae)
            subject = subject_from_json(header)
        rules = admin.proposed_rules(rule=body.rule, rule_id=body.rule_id)
        candidate = str(body.rule.get("name")) if body.rule else None
        return _test_payload(admin, rules, subject, candidate)

    @router.post("/rules/test/file", tags=["rules"])
    async def test_rules_file(
        _: Viewer,
        file: Annotated[UploadFile, File(description="a DICOM file (pixel data not needed)")],
        rule: Annotated[str | None, Form(description="an unsaved rule as JSON")] = None,
        rule_id: Annotated[int | None, Form()] = None,
        calling_ae: Annotated[str, Form()] = "",
        called_ae: Annotated[str, Form()] = "",
    ) -> dict[str, Any]:
        """Which rules would fire for an uploaded DICOM file."""
        subject = subject_from_dicom_bytes(await file.read(), calling_ae, called_ae)
        candidate_rule = None
        if rule:
            try:
                candidate_rule = json.loads(rule)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"rule: not JSON: {exc}", [("rule", "not JSON")]) from None
        rules = admin.proposed_rules(rule=candidate_rule, rule_id=rule_id)
        candidate = str(candidate_rule.get("name")) if isinstance(candidate_rule, dict) else None
        return _test_payload(admin, rules, subject, candidate)

    @router.post("/rules/replay", tags=["rules"])
    def replay_rules(body: ReplayBody, _: Viewer) -> dict[str, Any]:
        """Every series received in the last ``days`` days: which rules fire now and after."""
        proposed = admin.proposed_rules(
            rule=body.rule, rule_id=body.rule_id, rules=body.rules, remove_id=body.remove_id
        )
        return admin.replay(proposed, body.days)

    @router.get("/rules/{rule_id}", tags=["rules"])
    def get_rule(rule_id: int, _: Viewer) -> dict[str, Any]:
        return rule_json(admin.rules.get(rule_id))

    @router.put("/rules/{rule_id}", tags=["rules"])
    def update_rule(rule_id: int, body: RuleBody, principal: Editor) -> dict[str, Any]:
        return rule_json(
            admin.update_rule(rule_id, body.model_dump(exclude_none=True), principal.name)
        )

    @router.delete("/rules/{rule_id}", tags=["rules"])
    def delete_rule(rule_id: int, principal: Editor) -> dict[str, Any]:
        return rule_json(admin.delete_rule(rule_id, principal.name))

    @router.get("/rules/{rule_id}/versions", tags=["rules"])
    def rule_versions(rule_id: int, _: Viewer) -> list[dict[str, Any]]:
        """Every saved version, newest first (who, when, the whole rule)."""
        return [version_json(v) for v in admin.rules.versions(rule_id)]

    @router.post("/rules/{rule_id}/versions/{version}/restore", tags=["rules"])
    def restore_rule(rule_id: int, version: int, principal: Editor) -> dict[str, Any]:
        """Make an earlier version current again (saved as a new version)."""
        return rule_json(admin.restore_rule(rule_id, version, principal.name))

    # -- jobs -----------------------------------------------------------------------------

    @router.get("/jobs", tags=["jobs"])
    def list_jobs(
        _: Viewer,
        request: Request,
        response: Response,
        state: Annotated[str, Query(description=f"one of {', '.join(JOB_STATES)}")] = "",
        rule: str = "",
        plugin: str = "",
        study_date_from: Annotated[str, Query(description="YYYY-MM-DD")] = "",
        study_date_to: Annotated[str, Query(description="YYYY-MM-DD")] = "",
        text: Annotated[str, Query(description="UID, description, accession, error, id")] = "",
        series_uid: str = "",
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        shadow: Annotated[bool | None, Query(description="only shadow (or live) jobs")] = None,
        before_id: Annotated[
            int | None, Query(ge=1, description="the next page: jobs older than this id")
        ] = None,
    ) -> list[dict[str, Any]]:
        """Jobs newest first. A full page has a ``Link: <...>; rel="next"`` header (RFC 8288)
        that asks for the jobs older than its last one, with the same filters."""
        if state and state not in JOB_STATES:
            raise InvalidInput(
                f"unknown state {state!r} (known: {', '.join(JOB_STATES)})", [("state", "unknown")]
            )
        try:
            found = admin.catalog.search_jobs(
                state=state,
                rule=rule,
                plugin=plugin,
                study_date_from=study_date_from,
                study_date_to=study_date_to,
                text=text,
                series_uid=series_uid,
                limit=limit,
                mode="" if shadow is None else ("shadow" if shadow else "live"),
                before_id=before_id,
            )
        except ValueError as exc:
            field = "study_date_from" if study_date_from in str(exc) else "study_date_to"
            raise InvalidInput(str(exc), [(field, str(exc))]) from None
        if len(found) == limit:
            following = request.url.include_query_params(before_id=found[-1][0].id)
            response.headers["Link"] = f'<{following}>; rel="next"'
        etas = admin.etas()
        return [job_json(job, info, etas) for job, info in found]

    @router.get("/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: int, _: Viewer) -> dict[str, Any]:
        """A job with its series and its timeline (``events``)."""
        job, events, info = admin.job(job_id)
        data = {**job_json(job, info, admin.etas()), "events": [event_json(e) for e in events]}
        if data["eta"] is None and job.state in CANCELLABLE:
            data["eta_note"] = no_estimate_reason(job.plugin)
        return data

    @router.get("/stats/timeline", tags=["jobs"])
    def stats_timeline(
        _: Viewer,
        hours: Annotated[float, Query(gt=0, le=24 * 14)] = 24,
        bins: Annotated[int, Query(ge=1, le=500)] = 24,
    ) -> dict[str, Any]:
        """Throughput and per-stage latency over the last ``hours``: per bin, the jobs that
        ended done and the median seconds of each stage (receive, wait, load, infer,
        encode, export) from their events; times are epoch seconds."""
        return admin.timeline(hours, bins)

    @router.post("/jobs/{job_id}/retry", tags=["jobs"])
    def retry_job(job_id: int, principal: Editor) -> dict[str, Any]:
        """Failed/cancelled/done → run again (or only resend when results exist)."""
        return job_json(admin.retry_job(job_id, principal.name))

    @router.post("/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: int, principal: Editor) -> dict[str, Any]:
        return job_json(admin.cancel_job(job_id, principal.name))

    @router.post("/jobs/{job_id}/rerun", status_code=201, tags=["jobs"])
    def rerun_job(job_id: int, body: RerunBody, principal: Editor) -> dict[str, Any]:
        """Queue a new job for the same series, optionally with another plugin."""
        return job_json(admin.rerun_job(job_id, principal.name, body.plugin))

    @router.post("/jobs/{job_id}/priority", tags=["jobs"])
    def job_priority(job_id: int, body: PriorityBody, principal: Editor) -> dict[str, Any]:
        return job_json(admin.set_job_priority(job_id, body.priority, principal.name))

    # -- studies and series ---------------------------------------------------------------

    @router.get("/studies", tags=["studies"])
    def studies(
        _: Viewer,
        text: str = "",
        state: Annotated[str, Query(description="receiving or complete")] = "",
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> list[dict[str, Any]]:
        """Studies seen, newest first, each with its series, instance counts and job counts."""
        return [
            {**study, "series": [series_view_json(v) for v in study["series"]]}
            for study in admin.catalog.studies(text=text, state=state, limit=limit)
        ]

    @router.get("/series/{series_uid}", tags=["studies"])
    def series(series_uid: str, _: Viewer) -> dict[str, Any]:
        row = admin.series.series(series_uid)
        if row is None:
            from node.errors import NotFound

            raise NotFound(f"no series {series_uid} has been received")
        return {
            **series_json(row, admin.catalog.info(series_uid)),
            "jobs": [job_json(job) for job in admin.queue.jobs(series_uid=series_uid)],
        }

    @router.post("/series/{series_uid}/complete", tags=["studies"])
    def force_complete(series_uid: str, principal: Editor) -> dict[str, Any]:
        """Complete a series now (without waiting for the quiet period) and route it."""
        return series_json(admin.force_complete(series_uid, principal.name))

    @router.post("/series/{series_uid}/rerun", status_code=201, tags=["studies"])
    def rerun_series(series_uid: str, principal: Editor) -> dict[str, Any]:
        """Route a complete series again: a new job for each matching rule (audited)."""
        jobs = admin.rerun_series(series_uid, principal.name)
        return {"series_uid": series_uid, "jobs": [job_json(job) for job in jobs]}

    # -- destinations ---------------------------------------------------------------------

    @router.get("/destinations", tags=["destinations"])
    def destinations(_: Viewer) -> dict[str, dict[str, Any]]:
        return {n: destination_view(d) for n, d in admin.destinations.mapping().items()}

    @router.post("/destinations/echo", tags=["destinations"])
    def echo_unsaved(body: DestinationBody, _: Viewer) -> dict[str, Any]:
        """Probe a destination before saving it (C-ECHO, QIDO-RS, … by its kind)."""
        result = admin.echo("(unsaved)", parse_destination(body.model_dump(exclude_none=True)))
        return result.__dict__

    @router.get("/destinations/{name}", tags=["destinations"])
    def destination(name: str, _: Viewer) -> dict[str, Any]:
        return destination_view(admin.destinations.get(name))

    @router.post("/destinations/{name}", status_code=201, tags=["destinations"])
    def create_destination(name: str, body: DestinationBody, principal: Editor) -> dict[str, Any]:
        admin.save_destination(
            name, body.model_dump(exclude_none=True), principal.name, create=True
        )
        return destination_view(admin.destinations.get(name))

    @router.put("/destinations/{name}", tags=["destinations"])
    def update_destination(name: str, body: DestinationBody, principal: Editor) -> dict[str, Any]:
        admin.save_destination(
            name, body.model_dump(exclude_none=True), principal.name, create=False
        )
        return destination_view(admin.destinations.get(name))

    @router.delete("/destinations/{name}", tags=["destinations"])
    def delete_destination(name: str, principal: Editor) -> dict[str, str]:
        admin.delete_destination(name, principal.name)
        return {"deleted": name}

    @router.post("/destinations/{name}/echo", tags=["destinations"])
    def echo_destination(name: str, _: Viewer) -> dict[str, Any]:
        """Probe a saved destination (C-ECHO, QIDO-RS, … by its kind); ``ok``, ``status``
        (DIMSE, or 0 for a kind without one), ``seconds``, ``message``."""
        return admin.echo(name).__dict__

    # -- plugins, audit, users ------------------------------------------------------------

    @router.get("/plugins", tags=["plugins"])
    def plugins(_: Viewer) -> list[dict[str, Any]]:
        """Installed plugins with version, devices they are loaded on, and import errors."""
        return admin.plugins()

    @router.get("/log", tags=["audit"])
    def recent_log(
        _: Viewer,
        level: Annotated[str, Query(pattern="^(WARNING|ERROR|CRITICAL)$")] = "WARNING",
        text: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> list[dict[str, Any]]:
        """The node's recent warnings and errors (kept in memory), newest first."""
        from node.logs import RECENT

        return RECENT.records(level=level, text=text, limit=limit)

    @router.get("/audit", tags=["audit"])
    def audit(
        _: Viewer,
        user: str = "",
        action: str = "",
        target: str = "",
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> list[dict[str, Any]]:
        """The append-only audit log, newest first."""
        return [
            audit_json(e)
            for e in admin.audit_entries(user=user, action=action, target=target, limit=limit)
        ]

    @router.get("/audit/dicom", tags=["audit"], response_model=None)
    def dicom_audit(
        _: Editor,
        since: str = "",
        until: str = "",
        type: str = "",
        format: str = "json",
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> list[dict[str, Any]] | Response:
        """The DICOM audit trail (associations, instances received, results sent, deletions),
        oldest first. ``since``/``until``: epoch seconds, ISO 8601 or an age (``24h``);
        ``type``: one event type; ``format=jsonl``: one JSON object per line."""
        problems = []
        times: dict[str, float | None] = {}
        for name, value in (("since", since), ("until", until)):
            try:
                times[name] = parse_since(value) if value else None
            except ValueError as exc:
                problems.append((name, str(exc)))
        if type and type not in {t.value for t in EventType}:
            problems.append(("type", f"one of {', '.join(t.value for t in EventType)}"))
        if format not in ("json", "jsonl"):
            problems.append(("format", "json or jsonl"))
        if problems:
            raise InvalidInput("invalid audit query", problems)
        events = DicomAudit(admin.db).events(
            since=times["since"], until=times["until"], event_type=type or None, limit=limit
        )
        if format == "jsonl":
            lines = "".join(json.dumps(e.json()) + "\n" for e in events)
            return Response(lines, media_type="application/x-ndjson")
        return [e.json() for e in events]

    @router.get("/users", tags=["users"])
    def users(_: Editor) -> list[dict[str, Any]]:
        return [user_json(u) for u in admin.users.users()]

    @router.post("/users", status_code=201, tags=["users"])
    def add_user(body: UserBody, principal: Editor) -> dict[str, Any]:
        return user_json(admin.add_user(body.username, body.password, body.role, principal.name))

    @router.patch("/users/{username}", tags=["users"])
    def update_user(username: str, body: UserPatch, principal: Editor) -> dict[str, Any]:
        return user_json(
            admin.update_user(
                username,
                principal.name,
                role=body.role,
                password=body.password,
                disabled=body.disabled,
            )
        )

    @router.delete("/users/{username}", tags=["users"])
    def delete_user(username: str, principal: Editor) -> dict[str, str]:
        admin.delete_user(username, principal.name)
        return {"deleted": username}

    @router.post("/users/{username}/tokens", status_code=201, tags=["users"])
    def create_token(username: str, body: TokenBody, principal: Editor) -> dict[str, Any]:
        """Create an API token; ``token`` is shown once (send it as ``Authorization: Bearer``)."""
        expires_at = admin.token_expiry(body.expires_in_days, body.expires_at)
        secret, token = admin.create_token(username, body.name, principal.name, expires_at)
        return {**token_json(token), "token": secret}

    @router.get("/tokens", tags=["users"])
    def tokens(_: Editor) -> list[dict[str, Any]]:
        return [token_json(t) for t in admin.users.tokens()]

    @router.delete("/tokens/{token_id}", tags=["users"])
    def revoke_token(token_id: int, principal: Editor) -> dict[str, Any]:
        return token_json(admin.revoke_token(token_id, principal.name))

    return router
