"""When a received series counts as complete."""

from __future__ import annotations

from pydantic import Field

from node.config.base import _Strict


class CompletionSettings(_Strict):
    """When a series counts as complete."""

    series_quiet_seconds: float = Field(10.0, gt=0)
    #: How often the completion check runs.
    poll_seconds: float = Field(1.0, gt=0)
    #: How long a series waits instead of ``series_quiet_seconds`` when its sender was cut
    #: off (its association aborted, or the node restarted while it was receiving), so the
    #: sender's retry can complete it. A later association that ends normally, or the
    #: sender's instance count where it can be asked, completes it sooner.
    aborted_grace_seconds: float = Field(300.0, ge=0)
    #: A series still receiving this long after its generation's first instance (a sender
    #: that trickles, so the quiet period never comes) completes anyway; 0 turns it off.
    max_receiving_seconds: float = Field(3600.0, ge=0)
    #: At most this many generations of one series per ``generation_window_seconds``
    #: (instances that keep arriving after completion); further ones wait; 0: unbounded.
    max_generations_per_hour: int = Field(6, ge=0)
    #: The window of ``max_generations_per_hour`` (an hour; shorter in tests).
    generation_window_seconds: float = Field(3600.0, gt=0)
