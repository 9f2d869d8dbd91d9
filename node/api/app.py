"""The HTTP side of the node (FastAPI): health, metrics, the admin API and the web console.

``/healthz``, ``/readyz`` and (unless ``security.public_metrics`` is off)
``/metrics`` are open; everything else needs a login session or an API token.
Errors are JSON ``{"message": ..., "errors": [{"field", "message"}]}``.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from node import __version__
from node.api.auth import (
    CsrfFailed,
    NotAuthenticated,
    Principal,
    check_csrf,
    require_admin,
    resolve,
)
from node.api.dicomweb import dicomweb_router
from node.api.metrics import registry_for
from node.api.performed import performed_router
from node.api.radiomics import radiomics_router
from node.api.results import results_router
from node.api.retention import retention_router
from node.api.routes import api_router
from node.api.tokens import TokenAuth
from node.api.web import web_router
from node.api.worklist import worklist_router
from node.app import Node
from node.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.state.users import TokenExpired

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: Swagger UI 5's files (it reads OpenAPI 3.1, which FastAPI writes), from the
#: ``swagger-ui-py`` package: ``/docs`` loads nothing from elsewhere (FastAPI's default page
#: pulls them from a CDN).
DOCS_ASSETS = "/static/swagger-ui"
DOCS_ASSET_DIR = SWAGGER_UI_PY_ROOT / "static"
#: ``/docs``; ``validatorUrl: null`` keeps it from fetching a badge from the public validator.
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ainode API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{openapi}",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null
}});
</script>
</body>
</html>
"""
SETUP_CODE_FILE = "setup-code"


def _error(status: int, message: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return not path.startswith("/api") and "text/html" in request.headers.get("accept", "")


def _field(location: tuple[Any, ...]) -> str:
    parts = [p for p in location if p not in ("body", "query", "path", "form")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request"


def _setup_code(node: Node) -> str | None:
    """A one-time code for creating the first admin in the browser, while there is no user.

    The code is written to ``<data_dir>/setup-code`` (mode 0600), never to the log.
    """
    path = node.settings.node.data_dir / SETUP_CODE_FILE
    if node.admin.users.count():
        path.unlink(missing_ok=True)
        return None
    code = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(code + "\n")
    log.warning(
        "no user yet: open %s://localhost:%d/setup and enter the code in %s,"
        " or run 'ainode users add NAME --role admin'",
        "https" if node.settings.node.https else "http",
        node.settings.node.http_port,
        path.resolve(),
    )
    return code


def create_app(node: Node) -> FastAPI:
    app = FastAPI(
        title="ainode",
        version=__version__,
        description="Admin API of the clinical AI node. Log in on the console (session cookie)"
        " or send an API token as `Authorization: Bearer <token>`.",
        docs_url=None,  # served below from local files
        redoc_url=None,
    )
    admin = node.admin
    security = node.settings.security
    metrics_registry = registry_for(node)
    app.state.setup_code = _setup_code(node)

    async def viewer(request: Request) -> Principal:
        principal = resolve(request, admin.users, node.clock(), security.session_idle_minutes * 60)
        if principal is None:
            raise NotAuthenticated("log in first (session) or send an API token")
        await check_csrf(request, principal)
        request.state.principal = principal
        return principal

    async def editor(request: Request) -> Principal:
        principal = await viewer(request)
        require_admin(principal)
        return principal

    # -- errors -----------------------------------------------------------------------------

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
        if _wants_html(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return JSONResponse(
            {"message": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> Response:
        return _error(403, str(exc))

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return _error(403, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return _error(404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Response:
        return _error(409, str(exc))

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> Response:
        errors = [{"field": f, "message": m} for f, m in exc.problems]
        return _error(422, str(exc), errors)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": _field(tuple(e["loc"])), "message": str(e["msg"])} for e in exc.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return _error(422, f"invalid request: {message}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or endpoint: {request.url.path} (the API is listed at /docs)"
        response = _error(exc.status_code, message)
        response.headers.update(exc.headers or {})  # e.g. WWW-Authenticate on a 401
        return response

    # -- open endpoints ---------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 when the DICOM listener is up, 503 otherwise."""
        body: dict[str, Any] = {
            "status": "ok" if node.scp.running else "starting",
            "version": __version__,
            "ae_title": node.settings.node.ae_title,
            "dicom_port": node.settings.node.dicom_port,
            "device": str(node.device) if node.device is not None else None,
            "routines": "loaded" if node.routines_loaded.is_set() else "loading",
            "plugins": sorted(node.registry.names),
            "plugin_errors": node.registry.errors,
            "jobs": node.queue.depth(),
            "dicom": node.scp.counts,
            "receiving": node.receiving(),
        }
        return JSONResponse(body, status_code=200 if node.scp.running else 503)

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """200 when the node can take and process work: listener, routines, workers, database.

        Until the routines (plugins, torch) are loaded: 503, ``problems: ["routines loading"]``.
        """
        loaded = node.routines_loaded.is_set()
        checks = {
            "dicom_listener": node.scp.running,
            "routines_loaded": loaded,
            "worker": loaded and all(w.running for w in node.workers),
            "exporter": node.exporter.running,
        }
        try:
            node.db.ping()
            checks["database"] = True
        except Exception:
            checks["database"] = False
        # A worker that cannot write a job's state (e.g. the disk is full) says why.
        problems = [w.problem for w in node.workers if w.problem is not None]
        checks["job_state_recorded"] = not problems
        if not loaded:
            problems.insert(0, node.routines_problem or "routines loading")
        ready = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        if not security.public_metrics:
            await viewer(request)
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI over ``/openapi.json``, every asset served by the node itself."""
        return HTMLResponse(DOCS_PAGE.format(assets=DOCS_ASSETS, openapi=app.openapi_url))

    app.include_router(results_router(admin, viewer))
    app.include_router(api_router(admin, viewer, editor))
    app.include_router(radiomics_router(admin, viewer))
    app.include_router(retention_router(node, viewer))
    app.include_router(performed_router(node, viewer))
    app.include_router(web_router(node, viewer, editor))
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_ASSET_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def token_user(secret: str) -> str | None:
        """Admin API tokens are accepted on STOW-RS and the pull API too."""
        try:
            user = admin.users.user_for_token(secret, node.clock())
        except TokenExpired:
            return None
        return user.username if user is not None else None

    app.include_router(
        dicomweb_router(node, TokenAuth(node.settings.dicomweb, fallback=token_user))
    )
    app.include_router(worklist_router(node))
    return app
