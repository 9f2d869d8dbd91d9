"""Who may use the admin API and console: sessions, logins, metrics."""

from __future__ import annotations

from pydantic import Field

from node.config.base import _Strict


class SecuritySettings(_Strict):
    """Who may use the admin API and web console.

    Everything needs a login (session cookie) or an API token (``Authorization:
    Bearer ...``) except ``/healthz``, ``/readyz`` and, unless turned off here,
    ``/metrics``.
    """

    #: Serve Prometheus ``/metrics`` without login (scrapers rarely log in).
    public_metrics: bool = True
    #: A login session ends this many minutes after it started.
    session_minutes: float = Field(480.0, gt=0)
    #: ... or after this many minutes without a request (at least 1).
    session_idle_minutes: float = Field(60.0, ge=1)
    #: Mark the session cookie ``Secure`` (set when the console is served over HTTPS).
    secure_cookies: bool = False
    #: Wrong passwords (per user or per client address) before the login is locked.
    login_max_failures: int = Field(5, ge=1)
    #: How long a locked login stays locked.
    login_lockout_minutes: float = Field(15.0, gt=0)
    #: First delay after a wrong password; doubles per failure (at most 5 s).
    login_delay_seconds: float = Field(0.5, ge=0)
