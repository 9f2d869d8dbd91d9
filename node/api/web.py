"""The web console: server-rendered pages (Jinja2) with a little vanilla JavaScript.

Pages read through the same service functions as the API; buttons and the
rule editor call the JSON API with the session's CSRF token. Login, first
admin set-up and logout are plain HTML forms.
"""

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from node import __version__
from node.admin.destinations import destination_kinds, destination_view
from node.admin.shadow import result_objects
from node.api.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Principal
from node.api.serialize import audit_json, job_json, series_view_json
from node.api.throttle import LoginThrottle
from node.app import Node
from node.config.destinations import destination_kind
from node.contract.plugin import ValidatedInput
from node.errors import AinodeError
from node.orchestration.eta import describe
from node.results.radiomics import JSON_FILE as RADIOMICS_JSON
from node.state.jobs import JOB_STATES
from node.state.users import User
from node.worklist.dataset import (
    PROGRESS_INFORMATION,
    REASON_FOR_CANCELLATION,
    items,
    progress_of,
    value,
)

log = logging.getLogger(__name__)

#: Jobs on one page of the console's job table ("Older jobs" pages back).
JOBS_PER_PAGE = 100
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
Dependency = Callable[[Request], Awaitable[Principal]]


def _timestamp(value: float | None) -> str:
    if not value:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:]}" if len(value) == 8 else (value or "—")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _eta(value: dict[str, Any] | None, state: str) -> str:
    """A job's ``eta`` (:func:`~node.api.serialize.eta_json`) for people; '—' without one."""
    if not value:
        return "—"
    start, finish = (
        datetime.fromisoformat(value[key]).timestamp()
        for key in ("estimated_start", "estimated_finish")
    )
    return describe(start, finish, state)


def _yaml(value: Any) -> str:
    if not value:
        return ""
    return str(yaml.safe_dump(value, sort_keys=False, allow_unicode=True)).strip()


def _brief(value: Any) -> str:
    """A one-line summary of an audited value."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list))
        return (text or f"{len(value)} fields")[:70]
    if isinstance(value, list):
        return f"{len(value)} item" + ("" if len(value) == 1 else "s")
    return str(value)[:70]


TEMPLATES.env.filters["brief"] = _brief
TEMPLATES.env.filters["ts"] = _timestamp
TEMPLATES.env.filters["da"] = _date
TEMPLATES.env.filters["duration"] = _duration
TEMPLATES.env.filters["eta"] = _eta
TEMPLATES.env.filters["yaml"] = _yaml


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


def web_router(node: Node, viewer: Dependency, editor: Dependency) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    admin = node.admin
    security = node.settings.security
    # Served over HTTPS by the node itself: its cookies never travel in clear.
    secure_cookies = security.secure_cookies or node.settings.node.https is not None
    throttle = LoginThrottle(
        security.login_max_failures,
        security.login_lockout_minutes * 60,
        base_delay=security.login_delay_seconds,
    )
    Viewer = Annotated[Principal, Depends(viewer)]

    def render(
        request: Request, template: str, principal: Principal | None, **context: Any
    ) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "principal": principal,
                "version": __version__,
                "ae_title": node.settings.node.ae_title,
                "page": template.removesuffix(".html"),
                **context,
            },
        )

    def start_session(user: User, target: str) -> Response:
        secret, _session = admin.users.open_session(
            user, node.clock(), security.session_minutes * 60
        )
        response = RedirectResponse(_safe_next(target), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            secret,
            max_age=int(security.session_minutes * 60),
            httponly=True,
            samesite="lax",
            secure=secure_cookies,
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    def login_form(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, template, None, login_csrf=token, **context)
        response.status_code = status
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )
        return response

    def login_csrf_ok(request: Request, sent: str) -> bool:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        return bool(expected) and hmac.compare_digest(expected, sent)

    # -- login, set-up, logout --------------------------------------------------------------

    @router.get("/login")
    def login_page(request: Request, next: str = "/") -> Response:
        if admin.users.count() == 0:
            return RedirectResponse("/setup", status_code=303)
        return login_form(request, "login.html", next=_safe_next(next))

    @router.post("/login")
    def login(
        request: Request,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        if not login_csrf_ok(request, csrf_token):
            return login_form(
                request, "login.html", 400, next=next, error="The form expired; try again."
            )
        address = request.client.host if request.client else "unknown"
        keys = throttle.keys(username, address)
        locked = throttle.locked_for(keys, node.clock())
        if locked > 0:
            log.warning("login refused (locked) username=%s address=%s", username[:64], address)
            retry = int(locked) + 1
            response = login_form(
                request,
                "login.html",
                429,
                next=next,
                username=username,
                error=f"Too many wrong passwords; login locked, try again in {retry} s.",
            )
            response.headers["Retry-After"] = str(retry)
            return response
        user = admin.users.authenticate(username, password)
        if user is None:
            now = node.clock()
            delay, newly_locked = throttle.failed(keys, now)
            log.warning("login failed username=%s address=%s", username[:64], address)
            admin.audit.record(
                user=username[:64],
                action="login.failed",
                target=f"user:{username[:64]}",
                before=None,
                after={"address": address},
                now=now,
            )
            for key in newly_locked:
                log.warning("login locked %s for %.0f s", key, throttle.lockout_seconds)
                admin.audit.record(
                    user=username[:64],
                    action="login.locked",
                    target=key,
                    before=None,
                    after={"address": address, "seconds": throttle.lockout_seconds},
                    now=now,
                )
            time.sleep(delay)  # each failure answers more slowly (sync handler: a worker thread)
            return login_form(
                request,
                "login.html",
                401,
                next=next,
                username=username,
                error="Wrong user name or password.",
            )
        throttle.succeeded(keys)
        log.info("login username=%s role=%s", user.username, user.role)
        return start_session(user, next)

    @router.get("/setup")
    def setup_page(request: Request) -> Response:
        if admin.users.count():
            return RedirectResponse("/login", status_code=303)
        return login_form(request, "setup.html", code_file=_code_file(node))

    @router.post("/setup")
    def setup(
        request: Request,
        code: Annotated[str, Form()],
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        expected = request.app.state.setup_code
        if admin.users.count() or not expected:
            return RedirectResponse("/login", status_code=303)
        if not login_csrf_ok(request, csrf_token):
            return login_form(request, "setup.html", 400, error="The form expired; try again.")
        if not hmac.compare_digest(code.strip(), expected):
            return login_form(
                request,
                "setup.html",
                401,
                username=username,
                code_file=_code_file(node),
                error="That set-up code is not right; copy it from the file named above.",
            )
        try:
            user = admin.add_user(username, password, "admin", "setup")
        except AinodeError as exc:
            return login_form(
                request,
                "setup.html",
                422,
                username=username,
                code_file=_code_file(node),
                error=str(exc),
            )
        request.app.state.setup_code = None
        (node.settings.node.data_dir / "setup-code").unlink(missing_ok=True)
        return start_session(user, "/")

    @router.post("/logout")
    def logout(request: Request, principal: Viewer) -> Response:
        secret = request.cookies.get(SESSION_COOKIE)
        if secret:
            admin.users.close_session(secret)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- pages ------------------------------------------------------------------------------

    @router.get("/")
    def dashboard(request: Request, principal: Viewer) -> HTMLResponse:
        now = node.clock()
        finished = admin.catalog.finished_since(now - 86400)
        hours: list[dict[str, Any]] = []
        for back in range(11, -1, -1):
            start = now - (back + 1) * 3600
            end = now - back * 3600
            in_hour = [state for state, at in finished if start < at <= end]
            hours.append(
                {
                    "label": time.strftime("%H:00", time.localtime(end)),
                    "done": in_hour.count("done"),
                    "failed": in_hour.count("failed"),
                }
            )
        peak = max([int(h["done"]) + int(h["failed"]) for h in hours] + [1])
        failures = [job_json(j, i) for j, i in admin.catalog.search_jobs(state="failed", limit=10)]
        series_today = admin.catalog.series_views(since=now - 86400, limit=100000)
        return render(
            request,
            "dashboard.html",
            principal,
            depth=node.queue.depth(),
            counts=node.scp.counts,
            hours=hours,
            peak=peak,
            failures=failures,
            series_today=len(series_today),
            instances_today=sum(v.series.instance_count for v in series_today),
            done_today=sum(1 for state, _ in finished if state == "done"),
            failed_today=sum(1 for state, _ in finished if state == "failed"),
            skipped_today=sum(1 for state, _ in finished if state == "skipped"),
            node_info={
                "AE title": node.settings.node.ae_title,
                "DICOM port": node.settings.node.dicom_port,
                "Device": str(node.device) if node.device is not None else "loading",
                "Plugins": ", ".join(sorted(node.registry.names))
                or ("none" if node.routines_loaded.is_set() else "loading"),
                "Rules": len(admin.rules.stored()),
                "Destinations": ", ".join(admin.destinations.mapping()) or "none",
            },
        )

    @router.get("/rules")
    def rules_page(request: Request, principal: Viewer, series: str = "") -> HTMLResponse:
        return rules_editor(request, principal, None, series)

    @router.get("/rules/{rule_id}")
    def rule_page(
        request: Request, rule_id: int, principal: Viewer, series: str = ""
    ) -> HTMLResponse:
        return rules_editor(request, principal, rule_id, series)

    def rules_editor(
        request: Request, principal: Principal, rule_id: int | None, series: str
    ) -> HTMLResponse:
        stored = admin.rules.stored()
        editing = admin.rules.get(rule_id) if rule_id is not None else None
        versions = admin.rules.versions(rule_id) if rule_id is not None else []
        return render(
            request,
            "rules.html",
            principal,
            rules=stored,
            editing=editing,
            versions=versions,
            plugins=sorted(admin.plugin_names()),
            destinations=sorted(admin.destinations.mapping()),
            recent_series=[series_view_json(v) for v in admin.catalog.series_views(limit=200)],
            selected_series=series,
        )

    @router.get("/jobs")
    def jobs_page(
        request: Request,
        principal: Viewer,
        state: str = "",
        rule: str = "",
        plugin: str = "",
        study_date_from: str = "",
        study_date_to: str = "",
        text: str = "",
        mode: str = "",
        before_id: int | None = None,
    ) -> HTMLResponse:
        filters = {
            "mode": mode if mode in ("shadow", "live") else "",
            "state": state if state in JOB_STATES else "",
            "rule": rule,
            "plugin": plugin,
            "study_date_from": study_date_from,
            "study_date_to": study_date_to,
            "text": text,
        }
        error = ""
        try:
            found = admin.catalog.search_jobs(**filters, limit=JOBS_PER_PAGE, before_id=before_id)
        except ValueError as exc:
            error, found = str(exc), []
        chosen = {key: value for key, value in filters.items() if value}
        older = (
            f"/jobs?{urlencode({**chosen, 'before_id': found[-1][0].id})}"
            if len(found) == JOBS_PER_PAGE
            else ""
        )
        newest = f"/jobs?{urlencode(chosen)}" if before_id is not None else ""
        rules = sorted({s.rule.name for s in admin.rules.stored()} | {j.rule for j, _ in found})
        etas = admin.etas()
        return render(
            request,
            "jobs.html",
            principal,
            jobs=[job_json(j, i, etas) for j, i in found],
            filters=filters,
            states=JOB_STATES,
            rules=rules,
            plugins=sorted(admin.plugin_names()),
            error=error,
            older=older,
            newest=newest,
        )

    @router.get("/jobs/{job_id}")
    def job_page(request: Request, job_id: int, principal: Viewer) -> HTMLResponse:
        job, events, info = admin.job(job_id)
        audit = admin.audit_entries(target=f"job:{job_id}", limit=50)
        return render(
            request,
            "job.html",
            principal,
            job=job_json(job, info, admin.etas()),
            events=events,
            audit=[audit_json(a) for a in audit if a.target == f"job:{job_id}"],
            plugins=sorted(admin.plugin_names()),
            objects=result_objects(job),
            radiomics=job.result_dir is not None and (job.result_dir / RADIOMICS_JSON).is_file(),
            workitem=node.worklist.store.for_job(job_id),
        )

    @router.get("/studies")
    def studies_page(
        request: Request, principal: Viewer, text: str = "", state: str = ""
    ) -> HTMLResponse:
        studies = admin.catalog.studies(text=text, state=state if state else "", limit=1000)
        return render(
            request,
            "studies.html",
            principal,
            studies=[{**s, "series": [series_view_json(v) for v in s["series"]]} for s in studies],
            text=text,
            state=state,
        )

    @router.get("/destinations")
    def destinations_page(request: Request, principal: Viewer) -> HTMLResponse:
        destinations = admin.destinations.mapping()
        used: dict[str, list[str]] = {}
        for stored in admin.rules.stored():
            for name in stored.rule.send_to:
                used.setdefault(name, []).append(stored.rule.name)
        return render(
            request,
            "destinations.html",
            principal,
            destinations=destinations,
            definitions={name: destination_view(d) for name, d in destinations.items()},
            kind_of={name: destination_kind(d) for name, d in destinations.items()},
            kinds={kind["name"]: kind for kind in destination_kinds()},
            used=used,
        )

    @router.get("/plugins")
    def plugins_page(request: Request, principal: Viewer) -> HTMLResponse:
        plugins = admin.plugins()
        # Listed plugins were imported, so the plugin contract (and torch) is loaded.

        for plugin in plugins:
            declared = plugin["validated_on"]
            plugin["validated"] = ValidatedInput(**declared).describe() if declared else ""
        return render(request, "plugins.html", principal, plugins=plugins)

    @router.get("/audit")
    def audit_page(
        request: Request, principal: Viewer, user: str = "", action: str = "", target: str = ""
    ) -> HTMLResponse:
        entries = admin.audit_entries(user=user, action=action, target=target, limit=500)
        return render(
            request,
            "audit.html",
            principal,
            entries=[audit_json(e) for e in entries],
            filters={"user": user, "action": action, "target": target},
        )

    @router.get("/sources")
    def sources_page(request: Request, principal: Viewer) -> HTMLResponse:
        sources = []
        for name, source in sorted(node.settings.sources.items()):
            data = source.model_dump(mode="json", exclude={"auth"})
            where = data.get("url") or f"{data['ae_title']}@{data['host']}:{data['port']}"
            sources.append({"name": name, "kind": data["kind"], "where": where, **data})
        pulls = [pull.as_json() for pull in node.pulls.recent(100)]
        return render(request, "sources.html", principal, sources=sources, pulls=pulls)

    @router.get("/worklist")
    def worklist_page(request: Request, principal: Viewer) -> HTMLResponse:
        workitems = []
        for item in reversed(node.worklist.store.all(limit=500)):
            progress, description = progress_of(item.dataset)
            entry = (items(item.dataset, PROGRESS_INFORMATION) or [{}])[0]
            job = node.queue.get(item.job_id) if item.job_id else None
            workitems.append({
                **{k: getattr(item, k) for k in ("uid", "state", "task", "routine", "priority",
                   "job_id", "performer", "cancel_requested", "created_at", "updated_at")},
                "label": value(item.dataset, "00741204") or "",
                "progress": progress, "description": description,
                "reason": value(entry, REASON_FOR_CANCELLATION),
                "job_state": job.state if job else None,
            })  # fmt: skip
        tasks = sorted(node.settings.worklist.tasks.items())
        return render(request, "worklist.html", principal, workitems=workitems, tasks=tasks)

    @router.get("/log")
    def log_page(
        request: Request, principal: Viewer, level: str = "WARNING", text: str = ""
    ) -> HTMLResponse:
        from node.logs import RECENT

        level = level if level in ("WARNING", "ERROR", "CRITICAL") else "WARNING"
        entries = RECENT.records(level=level, text=text, limit=500)
        return render(
            request, "log.html", principal, entries=entries, filters={"level": level, "text": text}
        )

    @router.get("/storage")
    def storage_page(request: Request, principal: Viewer) -> HTMLResponse:
        from node.api.retention import storage_report

        return render(request, "storage.html", principal, report=storage_report(node, 100))

    @router.get("/users")
    def users_page(
        request: Request, principal: Annotated[Principal, Depends(editor)]
    ) -> HTMLResponse:
        return render(
            request,
            "users.html",
            principal,
            users=admin.users.users(),
            tokens=admin.users.tokens(),
        )

    return router


def _code_file(node: Node) -> str:
    return str((node.settings.node.data_dir / "setup-code").resolve())
