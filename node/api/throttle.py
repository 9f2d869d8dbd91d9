"""Login throttling: failed passwords per user and per client address are slowed, then locked.

Each failure for a key (``user:<name>`` or ``addr:<ip>``) makes the next answer wait longer
(``base * 2**(failures-1)`` seconds, at most ``max_delay``); after ``max_failures`` the key is
locked for ``lockout_seconds``, during which even the right password is refused. A successful
login clears the user's and the address's failures. The state lives in memory: a restart
clears it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0


@dataclass
class LoginThrottle:
    max_failures: int
    lockout_seconds: float
    base_delay: float = 0.5
    max_delay: float = 5.0
    _records: dict[str, _Record] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def keys(username: str, address: str) -> tuple[str, str]:
        return f"user:{username.strip().lower()[:64]}", f"addr:{address}"

    def locked_for(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds until every key in ``keys`` is unlocked (0 when none is locked)."""
        with self._lock:
            waits = [self._records[k].locked_until - now for k in keys if k in self._records]
        return max([0.0, *waits])

    def failed(self, keys: tuple[str, ...], now: float) -> tuple[float, list[str]]:
        """Count a failure; return the delay to impose and the keys that just got locked."""
        newly_locked: list[str] = []
        delay = 0.0
        with self._lock:
            for key in keys:
                record = self._records.setdefault(key, _Record())
                if record.locked_until and record.locked_until <= now:
                    record.failures, record.locked_until = 0, 0.0  # a lock expired: start over
                record.failures += 1
                delay = max(
                    delay, min(self.base_delay * 2 ** (record.failures - 1), self.max_delay)
                )
                if record.failures >= self.max_failures and record.locked_until <= now:
                    record.locked_until = now + self.lockout_seconds
                    newly_locked.append(key)
        return delay, newly_locked

    def succeeded(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)
