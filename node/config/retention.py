"""What the node deletes from its spool and results, and when."""

from __future__ import annotations

from pydantic import Field, field_validator

from node.config.base import _Strict


class RetentionSettings(_Strict):
    """What the node deletes from its spool and results, and when (see README "Retention").

    Results default to 30 days, longer than the 7 of the spool: they are what a
    site asks for again, and are re-creatable only while the spool still holds
    the series, so they need not outlive it by much.
    """

    enabled: bool = True
    #: Days after a series' last job finished before its spooled instances go.
    spool_days: float = Field(7, gt=0)
    #: Days after a series' last job finished before its result files go.
    results_days: float = Field(30, gt=0)
    #: Days a series whose last job failed is kept (inputs needed to retry it).
    failed_days: float = Field(30, gt=0)
    #: Below this much free disk (MB), the oldest finished series go first, whatever
    #: their age; must be above ``node.min_free_disk_mb``, where instances are refused.
    high_watermark_mb: int = Field(2048, ge=0)
    #: Cron expression (minute hour day month weekday) of the nightly pass.
    schedule: str = "30 2 * * *"
    #: Seconds between free-space checks against the high watermark.
    watermark_check_seconds: int = Field(60, ge=5)
    #: Never delete a series that has a shadow-mode job (its results feed the comparison).
    keep_shadow: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as error:
            raise ValueError(
                f"not a cron expression (minute hour day month weekday): {error}"
            ) from error
        return value
