"""From a complete series to jobs: read its header, match the rules, enqueue.

Every enabled rule whose conditions hold creates one job (rules are not
exclusive: a chest CT can feed a lung routine and a body-composition routine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pydicom

from node.config import RuleSettings
from node.routing import HeaderSubject, matching_rules
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.series import SeriesRow, SeriesStore

log = logging.getLogger(__name__)


def queue_rule_job(queue: JobQueue, row: SeriesRow, rule: RuleSettings, now: float) -> int:
    """Queue ``rule``'s job for the series ``row`` (its plugin, destinations, priority);
    return the job's id."""
    return queue.enqueue(
        series_uid=row.series_uid,
        study_uid=row.study_uid,
        generation=row.generation,
        rule=rule.name,
        plugin=rule.plugin,
        destinations=list(rule.send_to),
        priority=rule.priority,
        now=now,
        shadow=rule.shadow,
    )


class Dispatcher:
    """Turns complete series into queued jobs."""

    def __init__(
        self,
        series: SeriesStore,
        queue: JobQueue,
        rules: Callable[[], Sequence[RuleSettings]],
        *,
        clock: Callable[[], float],
        on_enqueued: Callable[[], None] = lambda: None,
        requested_rule: Callable[[SeriesRow], str | None] = lambda row: None,
    ) -> None:
        self._series = series
        self._queue = queue
        self._rules = rules
        self._clock = clock
        self._on_enqueued = on_enqueued
        self._requested_rule = requested_rule

    def header(self, row: SeriesRow) -> HeaderSubject | None:
        """The series' first readable header, with the sender's AE titles."""
        for path in self._series.instance_paths(row.series_uid):
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:
                log.warning("unreadable header skipped path=%s error=%s", path, exc)
                continue
            return HeaderSubject(dataset, calling_ae=row.calling_ae, called_ae=row.called_ae)
        return None

    def routes(self, row: SeriesRow) -> list[RuleSettings]:
        """The rules that would queue a job for ``row`` now (none for a pull-requested rule).

        With no rule enabled no header is read: a node that only receives (the read-ahead
        asks every 32 instances of an arriving series) pays nothing for asking.
        """
        rules = list(self._rules())
        if not rules or self._requested_rule(row) is not None:
            return []
        subject = self.header(row)
        return [] if subject is None else matching_rules(rules, subject)

    def dispatch(self, row: SeriesRow) -> list[int]:
        subject = self.header(row)
        if subject is None:
            log.warning("series has no readable instance series_uid=%s", row.series_uid)
            return []
        candidates = list(self._rules())
        requested = self._requested_rule(row)
        if requested is not None and requested.startswith("workitem:"):
            log.info("series fetched for a workitem series_uid=%s %s", row.series_uid, requested)
            return []  # the worklist performer queues its job (node/worklist/performer.py)
        if requested is not None:  # a pull named one rule: only it may run
            candidates = [rule for rule in candidates if rule.name == requested]
            if not candidates:
                log.warning("requested rule is not configured rule=%s", requested)
        rules = matching_rules(candidates, subject)
        if not rules:
            log.info("no rule matched series_uid=%s", row.series_uid)
            return []
        now = self._clock()
        with self._series.atomically():  # every matching rule's job, or none
            job_ids = [queue_rule_job(self._queue, row, rule, now) for rule in rules]
            if row.hold_reason:  # the job says why its series waited longer than usual
                for job_id in job_ids:
                    self._queue.add_event(job_id, now, EventCode.COMPLETION_HELD, row.hold_reason)
            if row.completion_note:  # completed at the maximum age, or waited for the rate bound
                for job_id in job_ids:
                    self._queue.add_event(
                        job_id, now, EventCode.COMPLETION_NOTE, row.completion_note
                    )
        log.info(
            "jobs queued series_uid=%s rules=%s job_ids=%s",
            row.series_uid,
            ",".join(rule.name for rule in rules),
            ",".join(map(str, job_ids)),
        )
        self._on_enqueued()
        return job_ids
