"""Local users, login sessions and API tokens.

Passwords are hashed with argon2id (``argon2-cffi``). Session ids and API
tokens are random 256-bit secrets handed to the client once; only their
SHA-256 is stored, so a copy of the database does not let anyone log in.
Roles: ``admin`` (may change things) and ``viewer`` (read only).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from node.errors import AinodeError, Conflict, InvalidInput, NotFound
from node.state.connection import Connection

log = logging.getLogger(__name__)

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: How finely a session's last use is recorded (one write per session and interval).
SEEN_RESOLUTION_SECONDS = 30.0
MIN_PASSWORD_LENGTH = 10
TOKEN_PREFIX = "ainode_"

_hasher = PasswordHasher()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    created_at: float
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class TokenExpired(AinodeError):
    """An API token past its expiry (answered 401 with this message)."""


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: float


@dataclass(frozen=True)
class ApiToken:
    id: int
    username: str
    name: str
    created_at: float
    last_used: float | None
    revoked: bool
    #: Unix time after which the token is refused (None: never expires).
    expires_at: float | None = None


def _user(row: object) -> User:
    data = dict(row)  # type: ignore[call-overload]
    return User(data["username"], data["role"], data["created_at"], bool(data["disabled"]))


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"the password must have at least {MIN_PASSWORD_LENGTH} characters",
            [("password", f"at least {MIN_PASSWORD_LENGTH} characters")],
        )


class UserStore:
    """Users, sessions and tokens in the state database."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    # -- users ------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._db.query("SELECT COUNT(*) AS n FROM users")[0]["n"])

    def users(self) -> list[User]:
        return [_user(row) for row in self._db.query("SELECT * FROM users ORDER BY username")]

    def get(self, username: str) -> User:
        rows = self._db.query("SELECT * FROM users WHERE username = ?", (username,))
        if not rows:
            raise NotFound(f"no user named {username!r}")
        return _user(rows[0])

    def add(self, username: str, password: str, role: str, now: float) -> User:
        if not USERNAME_PATTERN.match(username):
            raise InvalidInput(
                "user names use letters, digits and _ . @ - (at most 64)",
                [("username", "letters, digits and _ . @ - only")],
            )
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", [("role", "unknown")])
        check_password_strength(password)
        with self._db.transaction() as cursor:
            cursor.execute("SELECT 1 FROM users WHERE username = ?", (username,))
            if cursor.fetchone():
                raise Conflict(f"a user named {username!r} already exists")
            cursor.execute(
                "INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                (username, _hasher.hash(password), role, now),
            )
        log.info("user added username=%s role=%s", username, role)
        return self.get(username)

    def update(
        self,
        username: str,
        *,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        self.get(username)
        with self._db.transaction() as cursor:
            if role is not None:
                if role not in ROLES:
                    raise InvalidInput(f"role must be one of {', '.join(ROLES)}", [("role", "")])
                cursor.execute("UPDATE users SET role = ? WHERE username = ?", (role, username))
            if password is not None:
                check_password_strength(password)
                cursor.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ?",
                    (_hasher.hash(password), username),
                )
                cursor.execute("DELETE FROM sessions WHERE username = ?", (username,))
            if disabled is not None:
                cursor.execute(
                    "UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username)
                )
                if disabled:
                    cursor.execute("DELETE FROM sessions WHERE username = ?", (username,))
        return self.get(username)

    def delete(self, username: str) -> None:
        self.get(username)
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM sessions WHERE username = ?", (username,))
            cursor.execute("DELETE FROM api_tokens WHERE username = ?", (username,))
            cursor.execute("DELETE FROM users WHERE username = ?", (username,))

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account enabled, else None."""
        rows = self._db.query("SELECT * FROM users WHERE username = ?", (username,))
        if not rows:
            _hasher.hash(password)  # same cost whether or not the user exists
            return None
        try:
            _hasher.verify(rows[0]["password_hash"], password)
        except (VerificationError, InvalidHashError):
            return None
        user = _user(rows[0])
        if user.disabled:
            return None
        if _hasher.check_needs_rehash(rows[0]["password_hash"]):
            with self._db.transaction() as cursor:
                cursor.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ?",
                    (_hasher.hash(password), username),
                )
        return user

    # -- sessions ---------------------------------------------------------------------

    def open_session(self, user: User, now: float, lifetime_seconds: float) -> tuple[str, Session]:
        """Create a session; return the secret for the cookie and the session."""
        secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            cursor.execute(
                "INSERT INTO sessions"
                " (id_hash, username, csrf_token, created_at, expires_at, last_seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (_digest(secret), user.username, csrf, now, now + lifetime_seconds, now),
            )
        return secret, Session(user, csrf, now + lifetime_seconds)

    def session(self, secret: str, now: float, idle_seconds: float | None = None) -> Session | None:
        """The live session behind a cookie's ``secret``, marked as used at ``now``.

        ``None`` once the session has expired, its user is disabled, or (with
        ``idle_seconds``) no request came for that long; an idle session is deleted.
        The last-use time is written at most every :data:`SEEN_RESOLUTION_SECONDS`.
        """
        digest = _digest(secret)
        rows = self._db.query(
            "SELECT s.csrf_token, s.expires_at, s.last_seen_at, u.* FROM sessions s"
            " JOIN users u ON u.username = s.username WHERE s.id_hash = ?",
            (digest,),
        )
        if not rows or rows[0]["expires_at"] <= now or rows[0]["disabled"]:
            return None
        row = rows[0]
        idle = now - float(row["last_seen_at"])
        if idle_seconds is not None and idle > idle_seconds:
            self.close_session(secret)
            return None
        if idle >= SEEN_RESOLUTION_SECONDS:
            with self._db.transaction() as cursor:
                cursor.execute(
                    "UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?", (now, digest)
                )
        return Session(_user(row), row["csrf_token"], float(row["expires_at"]))

    def close_session(self, secret: str) -> None:
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM sessions WHERE id_hash = ?", (_digest(secret),))

    # -- API tokens -------------------------------------------------------------------

    def create_token(
        self, username: str, name: str, now: float, expires_at: float | None = None
    ) -> tuple[str, ApiToken]:
        """Create an API token; the secret is returned once and never stored."""
        self.get(username)
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("a token's expiry must be in the future")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO api_tokens (username, name, token_hash, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (username, name or "token", _digest(secret), now, expires_at),
            )
            token_id = int(cursor.lastrowid or 0)
        return secret, self.token(token_id)

    def token(self, token_id: int) -> ApiToken:
        rows = self._db.query("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        if not rows:
            raise NotFound(f"no API token with id {token_id}")
        row = rows[0]
        return ApiToken(
            row["id"],
            row["username"],
            row["name"],
            row["created_at"],
            row["last_used"],
            bool(row["revoked"]),
            row["expires_at"],
        )

    def tokens(self, username: str | None = None) -> list[ApiToken]:
        rows = self._db.query(
            "SELECT id FROM api_tokens"
            + (" WHERE username = ?" if username else "")
            + " ORDER BY id",
            (username,) if username else (),
        )
        return [self.token(int(row["id"])) for row in rows]

    def revoke_token(self, token_id: int) -> ApiToken:
        self.token(token_id)
        with self._db.transaction() as cursor:
            cursor.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?", (token_id,))
        return self.token(token_id)

    def user_for_token(self, secret: str, now: float) -> User | None:
        rows = self._db.query(
            "SELECT t.id AS token_id, t.name AS token_name, t.expires_at AS token_expires_at,"
            " u.* FROM api_tokens t JOIN users u"
            " ON u.username = t.username WHERE t.token_hash = ? AND t.revoked = 0",
            (_digest(secret),),
        )
        if not rows or rows[0]["disabled"]:
            return None
        expires_at = rows[0]["token_expires_at"]
        if expires_at is not None and expires_at <= now:
            stamp = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds")
            raise TokenExpired(f"API token {rows[0]['token_name']!r} expired at {stamp}")
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, rows[0]["token_id"])
            )
        return _user(rows[0])
