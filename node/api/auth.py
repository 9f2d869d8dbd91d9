"""Who is asking: a session cookie (console) or an API token (``Authorization: Bearer``).

Unsafe requests (POST, PUT, PATCH, DELETE) made with a session cookie must
carry the session's CSRF token, as the ``X-CSRF-Token`` header (the console's
scripts) or a ``csrf_token`` form field (HTML forms). Token requests need no
CSRF token: browsers never send them on their own.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from fastapi import Request

from node.errors import AinodeError, Forbidden
from node.state.users import Session, TokenExpired, User, UserStore

log = logging.getLogger(__name__)

SESSION_COOKIE = "ainode_session"
LOGIN_CSRF_COOKIE = "ainode_login_csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NotAuthenticated(AinodeError):
    """No valid session or token (pages redirect to the login, the API answers 401)."""


class CsrfFailed(AinodeError):
    """A cookie-authenticated change came without the session's CSRF token."""


@dataclass(frozen=True)
class Principal:
    user: User
    via: str  # "session" or "token"
    session: Session | None = None

    @property
    def name(self) -> str:
        return self.user.username

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token if self.session else ""


def resolve(
    request: Request, users: UserStore, now: float, idle_seconds: float | None = None
) -> Principal | None:
    """The user behind a bearer token or a session cookie (idle after ``idle_seconds``)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        try:
            user = users.user_for_token(header[7:].strip(), now)
        except TokenExpired as exc:
            raise NotAuthenticated(str(exc)) from None
        return Principal(user, "token") if user else None
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        session = users.session(secret, now, idle_seconds)
        if session is not None:
            return Principal(session.user, "session", session)
    return None


async def check_csrf(request: Request, principal: Principal) -> None:
    if principal.via != "session" or request.method not in UNSAFE_METHODS:
        return
    sent = request.headers.get("x-csrf-token", "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else ""
    if not sent or not hmac.compare_digest(sent, principal.csrf_token):
        log.warning("csrf check failed user=%s path=%s", principal.name, request.url.path)
        raise CsrfFailed("the form or request is missing its CSRF token; reload the page")


def require_admin(principal: Principal) -> None:
    if not principal.user.is_admin:
        raise Forbidden(
            f"user {principal.name!r} has the viewer role; an admin must make this change"
        )
