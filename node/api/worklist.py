"""UPS-RS (PS3.18 §11 "Worklist Service") under ``/dicomweb``, and its WebSocket channel.

=================================================================  =====================
``POST /dicomweb/workitems[?{uid}]``                               create (201, Location)
``GET /dicomweb/workitems?{matching}``                             search (200 / 204)
``GET /dicomweb/workitems/{uid}``                                  retrieve
``POST /dicomweb/workitems/{uid}[?{transaction uid}]``             update
``PUT /dicomweb/workitems/{uid}/state``                            change state
``POST /dicomweb/workitems/{uid}/cancelrequest``                   request cancellation
``POST|DELETE /dicomweb/workitems/{uid}/subscribers/{ae}``         (un)subscribe; the UID
                                                                   may be the global or
                                                                   filtered global one
``POST /dicomweb/workitems/1.2.840.10008.5.1.4.34.5/subscribers/{ae}/suspend``  suspend
``ws://…/dicomweb/subscribers/{ae}``                               event reports
=================================================================  =====================

Authentication: ``Authorization: Bearer`` with a ``dicomweb.tokens`` token (a machine
client: every operation) or a user's API token (admins: every operation; viewers: retrieve,
search, subscribe and the event channel); the event channel also takes the token as
``?access_token=`` (browsers cannot set headers on a WebSocket). A refusal answers the
PS3.18 status with a JSON ``{"message", "status"}`` body (``status`` the DIMSE code) and a
``Warning: 299 ainode: <reason>`` header; a request that changes nothing (e.g. completing
a COMPLETED workitem) answers 200 with such a Warning.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection

from node.api.tokens import digest
from node.app import Node
from node.state.users import TokenExpired
from node.state.workitems import FILTERED_GLOBAL, GLOBAL
from node.worklist.events import UpsEvent
from node.worklist.states import UpsError, UpsWarning

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: Events kept for a subscribed AE whose channel is not open (oldest dropped first).
BACKLOG = 1000


@dataclass(frozen=True)
class Caller:
    name: str
    can_write: bool


def _warning(text: str) -> dict[str, str]:
    return {"Warning": f'299 ainode: "{text}"'}


def _refused(exc: UpsError) -> JSONResponse:
    log.info("UPS-RS refused status=0x%04X http=%d reason=%s", exc.status, exc.http, exc)
    return JSONResponse(
        {"message": str(exc), "status": f"0x{exc.status:04X}"},
        status_code=exc.http,
        headers=_warning(exc.reason),
    )


def _bare_uid(request: Request) -> str | None:
    """The UID given as a bare query key (``…/workitems?1.2.3``) or ``?workitem=``."""
    query = unquote(request.url.query)
    if query and "=" not in query and "&" not in query:
        return query
    return request.query_params.get("workitem") or request.query_params.get("transaction-uid")


class EventChannels:
    """Open WebSocket channels by AE title, fed from the event bus (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]]] = {}
        self._backlog: dict[str, deque[str]] = {}

    def deliver(self, event: UpsEvent) -> None:
        message = json.dumps([event.dicom_json()])
        with self._lock:
            for ae in event.subscribers:
                channels = self._open.get(ae)
                if not channels:
                    self._backlog.setdefault(ae, deque(maxlen=BACKLOG)).append(message)
                    continue
                for loop, queue in channels:
                    loop.call_soon_threadsafe(queue.put_nowait, message)

    def open(self, ae: str) -> tuple[asyncio.Queue[str], Callable[[], None]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        entry = (loop, queue)
        with self._lock:
            for message in self._backlog.pop(ae, ()):
                queue.put_nowait(message)
            self._open.setdefault(ae, []).append(entry)

        def close() -> None:
            with self._lock:
                channels = self._open.get(ae, [])
                if entry in channels:
                    channels.remove(entry)
                if not channels:
                    self._open.pop(ae, None)

        return queue, close


def worklist_router(node: Node) -> APIRouter:
    """The routes above, bound to ``node``."""
    service = node.worklist
    settings = node.settings.dicomweb
    machine = [(entry.sha256 or digest(entry.token), entry.name) for entry in settings.tokens]
    channels = EventChannels()
    node.worklist_events.listen(channels.deliver)
    router = APIRouter(prefix="/dicomweb", tags=["worklist"])

    def identify(connection: HTTPConnection) -> Caller:
        header = connection.headers.get("authorization", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not secret and connection.scope["type"] == "websocket":
            # Browsers and one-line clients cannot set headers on a WebSocket.
            secret = connection.query_params.get("access_token", "")
        if secret:
            presented = digest(secret)
            for expected, name in machine:
                if hmac.compare_digest(presented, expected):
                    return Caller(name, True)
            try:
                user = node.admin.users.user_for_token(secret, node.clock())
            except TokenExpired:
                user = None
            if user is not None:
                return Caller(user.username, user.is_admin)
            log.warning("bearer token refused path=%s", connection.url.path)
        elif settings.allow_anonymous:
            return Caller("anonymous", True)
        raise HTTPException(
            status_code=401,
            detail="send a valid token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="ainode"'},
        )

    def writer(request: Request) -> Caller:
        caller = identify(request)
        if not caller.can_write:
            raise HTTPException(
                status_code=403,
                detail=f"user {caller.name!r} has the viewer role; creating and changing"
                " workitems needs an admin or a dicomweb token",
            )
        return caller

    async def body(request: Request) -> Any:
        raw = await request.body()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise UpsError(0x0106, f"the body is not JSON: {exc}") from None

    def ok(payload: Any, status: int = 200, warning: UpsWarning | None = None,
           headers: dict[str, str] | None = None) -> Response:  # fmt: skip
        extra = dict(headers or {})
        if warning is not None:
            extra.update(_warning(warning.reason))
        if payload is None:
            return Response(status_code=status, headers=extra)
        return JSONResponse(payload, status_code=status, headers=extra, media_type=DICOM_JSON)

    @router.post("/workitems")
    async def create(request: Request) -> Response:
        """Create a workitem (201 with ``Location``)."""
        caller = writer(request)
        try:
            data = await body(request)
            item = await run_in_threadpool(
                service.create, data, uid=_bare_uid(request), actor=caller.name
            )
        except UpsError as exc:
            return _refused(exc)
        location = f"{str(request.base_url).rstrip('/')}/dicomweb/workitems/{item.uid}"
        return ok(None, 201, headers={"Location": location, "Content-Location": location})

    @router.get("/workitems")
    def search(request: Request) -> Response:
        """Search workitems (QIDO-RS matching); 204 when nothing matches."""
        identify(request)
        try:
            found = service.search(request.query_params.multi_items())
        except UpsError as exc:
            return _refused(exc)
        return ok(found) if found else Response(status_code=204)

    @router.get("/workitems/{uid}")
    def retrieve(uid: str, request: Request) -> Response:
        identify(request)
        try:
            return ok([service.retrieve(uid)])
        except UpsError as exc:
            return _refused(exc)

    @router.post("/workitems/{uid}")
    async def update(uid: str, request: Request) -> Response:
        """Update; an IN PROGRESS workitem needs its Transaction UID as the query."""
        caller = writer(request)
        try:
            data = await body(request)
            await run_in_threadpool(
                service.update, uid, data, transaction_uid=_bare_uid(request), actor=caller.name
            )
        except UpsError as exc:
            return _refused(exc)
        return ok(None, 200)

    @router.put("/workitems/{uid}/state")
    async def change_state(uid: str, request: Request) -> Response:
        """Claim (IN PROGRESS + a new Transaction UID), complete or cancel."""
        caller = writer(request)
        try:
            data = await body(request)
            _, warning = await run_in_threadpool(service.change_state, uid, data, actor=caller.name)
        except UpsError as exc:
            return _refused(exc)
        return ok(None, 200, warning)

    @router.post("/workitems/{uid}/cancelrequest")
    async def cancel_request(uid: str, request: Request) -> Response:
        """Request cancellation (202); an already CANCELED one is a 409 with the warning."""
        caller = writer(request)
        try:
            data = await body(request)
            _, warning = await run_in_threadpool(
                service.request_cancel, uid, data, actor=caller.name
            )
        except UpsError as exc:
            return _refused(exc)
        if warning is not None:
            return JSONResponse(
                {"message": warning.reason, "status": f"0x{warning.status:04X}"},
                status_code=409,
                headers=_warning(warning.reason),
            )
        return ok(None, 202)

    @router.post("/workitems/{uid}/subscribers/{ae_title}", status_code=201)
    def subscribe(uid: str, ae_title: str, request: Request) -> Response:
        caller = identify(request)
        lock = request.query_params.get("deletionlock", "false").lower() == "true"
        try:
            service.subscribe(ae_title, uid, deletion_lock=lock, actor=caller.name,
                              filter_query=request.query_params.multi_items())  # fmt: skip
        except UpsError as exc:
            return _refused(exc)
        return ok(None, 201)

    @router.post(f"/workitems/{GLOBAL}/subscribers/{{ae_title}}/suspend")
    def suspend(ae_title: str, request: Request) -> Response:
        caller = identify(request)
        try:
            service.suspend(ae_title, actor=caller.name)
        except UpsError as exc:
            return _refused(exc)
        return ok(None, 200)

    @router.post(f"/workitems/{FILTERED_GLOBAL}/subscribers/{{ae_title}}/suspend")
    def suspend_filtered(ae_title: str, request: Request) -> Response:
        return suspend(ae_title, request)

    @router.delete("/workitems/{uid}/subscribers/{ae_title}")
    def unsubscribe(uid: str, ae_title: str, request: Request) -> Response:
        caller = identify(request)
        try:
            service.unsubscribe(ae_title, uid, actor=caller.name)
        except UpsError as exc:
            return _refused(exc)
        return ok(None, 200)

    @router.websocket("/subscribers/{ae_title}")
    async def events(websocket: WebSocket, ae_title: str) -> None:
        """The event channel: each UPS event report as a DICOM JSON array of one dataset."""
        try:
            identify(websocket)
        except HTTPException:
            await websocket.close(code=1008, reason="send a valid bearer token")
            return
        await websocket.accept()
        queue, close = channels.open(ae_title)
        log.info("UPS event channel open ae_title=%s", ae_title)
        receiver = asyncio.ensure_future(websocket.receive_text())
        try:
            while True:
                sender = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {sender, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                if sender in done:
                    await websocket.send_text(sender.result())
                else:
                    sender.cancel()  # nothing was taken from the queue
                if receiver in done:  # the client spoke (ignored) or left (raises)
                    receiver.result()
                    receiver = asyncio.ensure_future(websocket.receive_text())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            receiver.cancel()
            close()
            log.info("UPS event channel closed ae_title=%s", ae_title)

    return router
