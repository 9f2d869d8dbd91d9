"""Administration as plain functions: the REST API, the console and the CLI all call these.

Each change is validated, applied and written to the audit log (user, time,
value before and after). Errors are typed (:mod:`node.errors`) with messages
a person can act on; the HTTP layer maps them to status codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from node.admin.catalog import SeriesCatalog
from node.admin.destinations import (
    destination_view,
    parse_destination,
    restore_secrets,
)
from node.admin.rules import explain, firing, parse_rule
from node.config import AnyDestination, RuleSettings
from node.errors import AinodeError, Conflict, InvalidInput, NotFound
from node.export.senders import sender_for
from node.orchestration.dispatch import Dispatcher
from node.orchestration.eta import Eta, estimate
from node.orchestration.registry import PluginRegistry
from node.orchestration.timeline import timeline
from node.routing import HeaderSubject, Subject
from node.state.audit import AuditEntry, AuditLog
from node.state.connection import Connection
from node.state.destinations import DestinationStore, check_name
from node.state.events import EventCode
from node.state.history import JobHistory
from node.state.jobs import Job, JobActionError, JobEvent, JobQueue
from node.state.retention import RetentionStore
from node.state.rules import RuleStore, StoredRule, rule_definition
from node.state.series import SeriesRow, SeriesStore
from node.state.users import ApiToken, User, UserStore

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class EchoResult:
    destination: str
    ok: bool
    status: int | None
    seconds: float
    message: str


def series_events(job_id: int, row: SeriesRow) -> list[JobEvent]:
    """The series' milestones as timeline entries of job ``job_id``."""
    source = f" from {row.calling_ae}" if row.calling_ae else ""
    received = EventCode.SERIES_RECEIVED
    events = [
        JobEvent(job_id, row.first_received, received.event, f"first instance{source}", received)
    ]
    if row.completed_at is not None:
        events.append(
            JobEvent(
                job_id,
                row.completed_at,
                EventCode.SERIES_COMPLETE.event,
                f"{row.instance_count} instances, generation {row.generation}",
                EventCode.SERIES_COMPLETE,
            )
        )
    return events


def _job_summary(job: Job) -> dict[str, Any]:
    return {"state": job.state, "priority": job.priority, "plugin": job.plugin, "error": job.error}


def _user_summary(user: User) -> dict[str, Any]:
    return {"username": user.username, "role": user.role, "disabled": user.disabled}


class AdminService:
    """Everything an administrator can see and change, over the node's state database.

    Parameters
    ----------
    db
        The state database (the node's own, or one the CLI opened).
    registry
        Installed plugins (for validation and the plugin page).
    clock
        Seconds since the epoch.
    calling_ae
        The node's AE title, used for C-ECHO tests.
    force_complete
        Completes a series now and dispatches it (the running node's completion
        monitor); ``None`` where no node runs (the CLI).
    wake
        Called after a job action so workers and exporter look at the queue at once.
    """

    def __init__(
        self,
        db: Connection,
        registry: PluginRegistry,
        *,
        clock: Callable[[], float] = time.time,
        calling_ae: str = "AINODE",
        device: torch.device | None = None,
        force_complete: Callable[[str], SeriesRow | None] | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.clock = clock
        self.calling_ae = calling_ae
        self.device = device
        #: The device of each worker (the queue's ETA spreads jobs over them); the node sets it.
        self.worker_devices: list[str] = [str(device)] if device is not None else ["cpu"]
        #: The Ray executor's actors (``executor.kind: ray``; the node sets it), one dict each.
        self.executor_actors: Callable[[], list[dict[str, Any]]] = list
        self.history = JobHistory(db)
        self.rules = RuleStore(db)
        self.destinations = DestinationStore(db)
        self.users = UserStore(db)
        self.audit = AuditLog(db)
        self.series = SeriesStore(db)
        self.queue = JobQueue(db)
        self.catalog = SeriesCatalog(db, self.series)
        self._force_complete = force_complete
        self._wake = wake

    # -- seeding ------------------------------------------------------------------------

    def seed_from_config(
        self, rules: Sequence[RuleSettings], destinations: Mapping[str, AnyDestination]
    ) -> None:
        """Copy YAML destinations and rules in on first start; afterwards the database decides."""
        now = self.clock()
        if self.destinations.seed(destinations, now):
            self.audit.record(
                user="config",
                action="destinations.seed",
                target="destinations",
                before=None,
                after={n: destination_view(d) for n, d in destinations.items()},
                now=now,
            )
        else:
            self._upgrade_retry_defaults(now)
            if {n: d.model_dump() for n, d in destinations.items()} != {
                n: d.model_dump() for n, d in self.destinations.mapping().items()
            }:
                log.warning(
                    "config destinations ignored: the database decides since the first start"
                    " (edit them in the console or API)"
                )
        if self.rules.seed(rules, now):
            self.audit.record(
                user="config",
                action="rules.seed",
                target="rules",
                before=None,
                after=[rule_definition(r) for r in rules],
                now=now,
            )
        elif [rule_definition(r) for r in rules] != [
            rule_definition(r) for r in self.rules.active()
        ]:
            log.warning(
                "config rules ignored: the database decides since the first start"
                " (edit them in the console, the API or with 'ainode rules')"
            )

    def _upgrade_retry_defaults(self, now: float) -> None:
        """Destinations stored by an older node with its ~30 s retry default get a day."""
        upgraded = self.destinations.upgrade_retry_defaults(now)
        if not upgraded:
            return
        log.warning(
            "destinations upgraded to the day-long retry budget (they held the old default"
            " of 5 attempts, ~30 s) destinations=%s",
            ",".join(upgraded),
        )
        self.audit.record(
            user="upgrade",
            action="destinations.retry_defaults",
            target="destinations",
            before=None,
            after={n: destination_view(self.destinations.get(n)) for n in upgraded},
            now=now,
        )

    # -- plugins ------------------------------------------------------------------------

    def plugin_names(self) -> set[str]:
        return self.registry.known_names()

    def plugins(self) -> list[dict[str, Any]]:
        """Installed plugins, then those that failed to import or be configured.

        A plugin that imported but failed to load on a device (its last try) has
        status ``error``, the reason in ``error`` and per device in ``load_errors``.
        """
        loaded = self.registry.loaded_devices()
        actors = self.executor_actors()
        items: list[dict[str, Any]] = []
        for info in self.registry.info():
            load_errors = self.registry.load_errors(info.name)
            items.append(
                {
                    "name": info.name,
                    "version": info.version,
                    "template": info.template,
                    "source": info.source,
                    "modalities": list(info.accepts.modalities),
                    "status": "error" if load_errors else "ok",
                    "error": "; ".join(load_errors[d] for d in sorted(load_errors)) or None,
                    "load_errors": load_errors,
                    "loaded_on": loaded.get(info.name, []),
                    "device": str(self.device) if self.device is not None else None,
                    "validated_on": asdict(info.validated_on) if info.validated_on else None,
                    "ray_actors": [a for a in actors if a["plugin"] == info.name],
                }
            )
        for name, error in sorted(self.registry.errors.items()):
            items.append(
                {
                    "name": name,
                    "version": None,
                    "template": None,
                    "source": None,
                    "modalities": [],
                    "status": "error",
                    "error": error,
                    "load_errors": {},
                    "loaded_on": [],
                    "device": None,
                    "validated_on": None,
                    "ray_actors": [],
                }
            )
        return items

    # -- rules --------------------------------------------------------------------------

    def validate_rule(self, data: Any, *, rule_id: int | None = None) -> RuleSettings:
        taken = [s.rule.name for s in self.rules.stored() if s.id != rule_id]
        return parse_rule(
            data,
            plugins=self.plugin_names(),
            destinations=self.destinations.mapping(),
            taken_names=taken,
        )

    def create_rule(self, data: Any, actor: str) -> StoredRule:
        rule = self.validate_rule(data)
        stored = self.rules.create(rule, actor, self.clock())
        self.audit.record(
            user=actor,
            action="rule.create",
            target=f"rule:{stored.id}",
            before=None,
            after=rule_definition(rule),
            now=self.clock(),
        )
        return stored

    def update_rule(self, rule_id: int, data: Any, actor: str) -> StoredRule:
        before = self.rules.get(rule_id)
        rule = self.validate_rule(data, rule_id=rule_id)
        stored = self.rules.update(rule_id, rule, actor, self.clock())
        self.audit.record(
            user=actor,
            action="rule.update",
            target=f"rule:{rule_id}",
            before=rule_definition(before.rule),
            after=rule_definition(rule),
            now=self.clock(),
        )
        return stored

    def delete_rule(self, rule_id: int, actor: str) -> StoredRule:
        removed = self.rules.delete(rule_id, actor, self.clock())
        self.audit.record(
            user=actor,
            action="rule.delete",
            target=f"rule:{rule_id}",
            before=rule_definition(removed.rule),
            after=None,
            now=self.clock(),
        )
        return removed

    def reorder_rules(self, rule_ids: Sequence[int], actor: str) -> list[StoredRule]:
        before = [s.rule.name for s in self.rules.stored()]
        stored = self.rules.reorder(rule_ids)
        self.audit.record(
            user=actor,
            action="rule.reorder",
            target="rules",
            before=before,
            after=[s.rule.name for s in stored],
            now=self.clock(),
        )
        return stored

    def restore_rule(self, rule_id: int, version: int, actor: str) -> StoredRule:
        old = self.rules.version(rule_id, version)
        if old.definition is None:
            raise InvalidInput(
                f"version {version} of rule {rule_id} is its deletion; pick an earlier version",
                [("version", "a deletion cannot be restored")],
            )
        try:
            current: StoredRule | None = self.rules.get(rule_id)
        except NotFound:
            current = None
        rule = self.validate_rule(old.definition, rule_id=rule_id)
        if current is None:
            self.rules.restore_deleted(rule_id, rule, actor, self.clock())
        else:
            self.rules.update(rule_id, rule, actor, self.clock(), action=f"restored v{version}")
        self.audit.record(
            user=actor,
            action="rule.restore",
            target=f"rule:{rule_id}",
            before=None if current is None else rule_definition(current.rule),
            after={**rule_definition(rule), "restored_version": version},
            now=self.clock(),
        )
        return self.rules.get(rule_id)

    def proposed_rules(
        self,
        *,
        rule: Any = None,
        rule_id: int | None = None,
        rules: Sequence[Any] | None = None,
        remove_id: int | None = None,
    ) -> list[RuleSettings]:
        """The rule set as it would be after a change (for test and replay).

        ``rules`` replaces the whole set; ``rule`` (with ``rule_id`` when it edits an
        existing rule) adds or replaces one; ``remove_id`` drops one.
        """
        if rules is not None:
            parsed: list[RuleSettings] = []
            for index, item in enumerate(rules):
                try:
                    parsed.append(
                        parse_rule(
                            item,
                            plugins=self.plugin_names(),
                            destinations=self.destinations.mapping(),
                            taken_names=[r.name for r in parsed],
                        )
                    )
                except InvalidInput as exc:
                    raise InvalidInput(
                        f"rules[{index}]: {exc}",
                        [(f"rules[{index}].{f}", m) for f, m in exc.problems],
                    ) from None
            return parsed
        stored = self.rules.stored()
        if remove_id is not None:
            self.rules.get(remove_id)
            stored = [s for s in stored if s.id != remove_id]
        current = [(s.id, s.rule) for s in stored]
        if rule is None:
            return [r for _, r in current]
        candidate = self.validate_rule(rule, rule_id=rule_id)
        if rule_id is not None:
            self.rules.get(rule_id)
            return [candidate if i == rule_id else r for i, r in current]
        return [*(r for _, r in current), candidate]

    def series_subject(self, series_uid: str) -> Subject:
        row = self.series.series(series_uid)
        if row is None:
            raise NotFound(f"no series {series_uid} has been received")
        header = self.catalog.header(series_uid)
        if header is None:
            raise NotFound(f"series {series_uid} has no readable instance left in the spool")
        return HeaderSubject(header, calling_ae=row.calling_ae, called_ae=row.called_ae)

    def test_rules(self, rules: Sequence[RuleSettings], subject: Subject) -> list[dict[str, Any]]:
        return explain(rules, subject)

    def replay(self, proposed: Sequence[RuleSettings], days: float) -> dict[str, Any]:
        """Which rules would fire for each series received in the last ``days`` days.

        Compares the current rules with ``proposed`` and lists, per series, the rules
        that would start firing (``added``) or stop (``removed``).
        """
        if days <= 0 or days > 3650:
            raise InvalidInput("days must be between 0 and 3650", [("days", "out of range")])
        current = self.rules.active()
        since = self.clock() - days * DAY
        items: list[dict[str, Any]] = []
        unreadable = 0
        for view in self.catalog.series_views(since=since, limit=100000):
            header = self.catalog.header(view.series.series_uid)
            if header is None:
                unreadable += 1
                continue
            subject = HeaderSubject(
                header, calling_ae=view.series.calling_ae, called_ae=view.series.called_ae
            )
            now_fire, then_fire = firing(current, subject), firing(proposed, subject)
            items.append(
                {
                    "series_uid": view.series.series_uid,
                    "study_uid": view.series.study_uid,
                    "modality": view.series.modality,
                    "series_description": view.info["series_description"],
                    "study_date": view.info["study_date"],
                    "last_received": view.series.last_received,
                    "current": now_fire,
                    "proposed": then_fire,
                    "added": [n for n in then_fire if n not in now_fire],
                    "removed": [n for n in now_fire if n not in then_fire],
                }
            )
        return {
            "days": days,
            "series": len(items),
            "unreadable": unreadable,
            "changed": sum(1 for i in items if i["added"] or i["removed"]),
            "jobs_now": sum(len(i["current"]) for i in items),
            "jobs_proposed": sum(len(i["proposed"]) for i in items),
            "items": items,
        }

    # -- jobs ---------------------------------------------------------------------------

    def etas(self) -> dict[int, Eta | None]:
        """The estimate of every queued, running and exporting job (two queries)."""
        return estimate(
            self.history.run_samples(),
            self.history.active_jobs(),
            self.worker_devices,
            self.clock(),
        )

    def timeline(self, hours: float, bins: int) -> dict[str, Any]:
        """Jobs finished and per-stage medians over the last ``hours`` in ``bins`` bins."""
        until = self.clock()
        since = until - hours * 3600.0
        return timeline(self.history.stage_samples(since), since=since, until=until, bins=bins)

    def job(self, job_id: int) -> tuple[Job, list[JobEvent], dict[str, str]]:
        """A job, its timeline and its series' description.

        The timeline is the queue's events with the series' own milestones added:
        ``received`` (its first instance) and ``complete`` (when it was judged
        complete and routed), all ordered by time.
        """
        job = self.queue.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        events = self.queue.events(job_id)
        row = self.series.series(job.series_uid)
        if row is not None:
            events = series_events(job_id, row) + events
        # Stable: an event at the same time as a series milestone stays after it.
        events.sort(key=lambda event: event.at)
        return job, events, self.catalog.info(job.series_uid)

    def _job_action(
        self, job_id: int, actor: str, action: str, apply: Callable[[], Job | int]
    ) -> Job:
        before = self.job(job_id)[0]
        try:
            outcome = apply()
        except JobActionError as exc:
            raise Conflict(str(exc)) from None
        except KeyError:
            raise NotFound(f"no job with id {job_id}") from None
        after = self.queue.get(outcome) if isinstance(outcome, int) else outcome
        assert after is not None
        self.audit.record(
            user=actor,
            action=f"job.{action}",
            target=f"job:{job_id}",
            before=_job_summary(before),
            after={**_job_summary(after), "job_id": after.id},
            now=self.clock(),
        )
        self._wake()
        return after

    def _refuse_purged(self, job_id: int) -> None:
        """A job whose series' spool retention deleted cannot run again (409)."""
        job = self.queue.get(job_id)
        if job is None:
            return
        mark = RetentionStore(self.db).purge_mark(job.series_uid)
        if mark is not None and mark.spool_purged_at is not None:
            raise Conflict(
                f"series {job.series_uid} was deleted by retention; its instances are gone,"
                " so the job cannot run again (send the series again to process it)"
            )

    def retry_job(self, job_id: int, actor: str) -> Job:
        self._refuse_purged(job_id)
        return self._job_action(
            job_id, actor, "retry", lambda: self.queue.retry(job_id, self.clock(), by=actor)
        )

    def cancel_job(self, job_id: int, actor: str) -> Job:
        return self._job_action(
            job_id, actor, "cancel", lambda: self.queue.cancel(job_id, self.clock(), by=actor)
        )

    def rerun_job(self, job_id: int, actor: str, plugin: str | None = None) -> Job:
        self._refuse_purged(job_id)
        if plugin is not None and plugin not in self.plugin_names():
            names = ", ".join(sorted(self.plugin_names())) or "none installed"
            raise InvalidInput(
                f"unknown plugin {plugin!r} (installed: {names})", [("plugin", "unknown plugin")]
            )
        return self._job_action(
            job_id,
            actor,
            "rerun",
            lambda: self.queue.rerun(job_id, self.clock(), by=actor, plugin=plugin),
        )

    def set_job_priority(self, job_id: int, priority: int, actor: str) -> Job:
        return self._job_action(
            job_id,
            actor,
            "priority",
            lambda: self.queue.set_priority(job_id, priority, self.clock(), by=actor),
        )

    # -- series -------------------------------------------------------------------------

    def force_complete(self, series_uid: str, actor: str) -> SeriesRow:
        before = self.series.series(series_uid)
        if before is None:
            raise NotFound(f"no series {series_uid} has been received")
        if before.state == "complete":
            raise Conflict(
                f"series {series_uid} is already complete; to run its rules again use"
                f" POST /api/series/{series_uid}/rerun (ainode series rerun {series_uid})"
            )
        complete = self._force_complete or self._complete_in_database
        row = complete(series_uid)
        if row is None:
            raise Conflict(f"series {series_uid} completed on its own meanwhile")
        self.audit.record(
            user=actor,
            action="series.force_complete",
            target=f"series:{series_uid}",
            before={"state": before.state, "instances": before.instance_count},
            after={"state": row.state, "generation": row.generation},
            now=self.clock(),
        )
        return row

    def _complete_in_database(self, series_uid: str) -> SeriesRow | None:
        """Complete and dispatch a series from outside the node (the CLI), in one transaction.

        The running node's completion monitor skips a series that is complete already, and
        its workers claim the queued jobs from the shared database.
        """
        dispatcher = Dispatcher(self.series, self.queue, self.rules.active, clock=self.clock)
        with self.series.atomically():
            row = self.series.force_complete(series_uid, self.clock())
            if row is None:
                return None
            job_ids = dispatcher.dispatch(row)
            self.series.mark_dispatched(series_uid, row.generation)
        log.info(
            "series completed by an admin series_uid=%s instances=%d generation=%d job_ids=%s",
            series_uid,
            row.instance_count,
            row.generation,
            ",".join(map(str, job_ids)),
        )
        self._wake()
        return row

    def rerun_series(self, series_uid: str, actor: str) -> list[Job]:
        """Route a complete series again: one new job per matching rule, same generation.

        For a series whose jobs were lost, failed for good or ran under old rules.
        Returns the new jobs (none when no rule matches).
        """
        row = self.series.series(series_uid)
        if row is None:
            raise NotFound(f"no series {series_uid} has been received")
        if row.state != "complete":
            raise Conflict(
                f"series {series_uid} is still receiving; complete it first"
                f" (POST /api/series/{series_uid}/complete)"
            )
        dispatcher = Dispatcher(self.series, self.queue, self.rules.active, clock=self.clock)
        with self.series.atomically():
            job_ids = dispatcher.dispatch(row)
            self.series.mark_dispatched(series_uid, row.generation)
            self.audit.record(
                user=actor,
                action="series.rerun",
                target=f"series:{series_uid}",
                before={"state": row.state, "generation": row.generation},
                after={"generation": row.generation, "job_ids": job_ids},
                now=self.clock(),
            )
            now = self.clock()
            for job_id in job_ids:
                self.queue.add_event(job_id, now, EventCode.SERIES_RERUN, f"by {actor}")
        log.info(
            "series routed again series_uid=%s generation=%d job_ids=%s",
            series_uid,
            row.generation,
            ",".join(map(str, job_ids)),
        )
        self._wake()
        return [job for job in (self.queue.get(i) for i in job_ids) if job is not None]

    # -- destinations -------------------------------------------------------------------

    def save_destination(self, name: str, data: Any, actor: str, *, create: bool) -> None:
        check_name(name)
        stored = None if create else self.destinations.get(name)
        destination = parse_destination(restore_secrets(data, stored))
        previous = self.destinations.put(name, destination, actor, self.clock(), create=create)
        self.audit.record(
            user=actor,
            action="destination.create" if create else "destination.update",
            target=f"destination:{name}",
            before=None if previous is None else destination_view(previous),
            after=destination_view(destination),
            now=self.clock(),
        )

    def delete_destination(self, name: str, actor: str) -> None:
        self.destinations.get(name)
        users = [s.rule.name for s in self.rules.stored() if name in s.rule.send_to]
        if users:
            raise Conflict(
                f"destination {name!r} is used by rule(s) {', '.join(users)}; remove it there first"
            )
        previous = self.destinations.delete(name)
        self.audit.record(
            user=actor,
            action="destination.delete",
            target=f"destination:{name}",
            before=destination_view(previous),
            after=None,
            now=self.clock(),
        )

    def echo(self, name: str, destination: AnyDestination | None = None) -> EchoResult:
        """Probe a saved destination (or an unsaved one given as ``destination``) with its
        kind's probe: C-ECHO, QIDO-RS, …"""
        target = destination or self.destinations.get(name)
        started = time.perf_counter()
        try:
            answer = sender_for(target, calling_ae=self.calling_ae).probe()
        except (AinodeError, OSError, RuntimeError, ValueError) as exc:
            return EchoResult(name, False, None, time.perf_counter() - started, str(exc))
        seconds = time.perf_counter() - started
        ok = answer.status == 0
        log.info("echo destination=%s ok=%s seconds=%.3f", name, ok, seconds)
        return EchoResult(name, ok, answer.status, seconds, answer.message)

    # -- users --------------------------------------------------------------------------

    def add_user(self, username: str, password: str, role: str, actor: str) -> User:
        user = self.users.add(username, password, role, self.clock())
        self.audit.record(
            user=actor,
            action="user.create",
            target=f"user:{username}",
            before=None,
            after=_user_summary(user),
            now=self.clock(),
        )
        return user

    def update_user(
        self,
        username: str,
        actor: str,
        *,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        before = self.users.get(username)
        if before.is_admin and (role == "viewer" or disabled) and self._last_admin(username):
            raise Conflict("this is the last enabled admin; make another admin first")
        after = self.users.update(username, role=role, password=password, disabled=disabled)
        self.audit.record(
            user=actor,
            action="user.update",
            target=f"user:{username}",
            before=_user_summary(before),
            after={**_user_summary(after), "password_changed": password is not None},
            now=self.clock(),
        )
        return after

    def _last_admin(self, username: str) -> bool:
        admins = [u for u in self.users.users() if u.is_admin and not u.disabled]
        return [u.username for u in admins] == [username]

    def delete_user(self, username: str, actor: str) -> None:
        before = self.users.get(username)
        if before.is_admin and self._last_admin(username):
            raise Conflict("this is the last enabled admin; make another admin first")
        self.users.delete(username)
        self.audit.record(
            user=actor,
            action="user.delete",
            target=f"user:{username}",
            before=_user_summary(before),
            after=None,
            now=self.clock(),
        )

    def create_token(
        self, username: str, name: str, actor: str, expires_at: float | None = None
    ) -> tuple[str, ApiToken]:
        secret, token = self.users.create_token(username, name, self.clock(), expires_at)
        self.audit.record(
            user=actor,
            action="token.create",
            target=f"user:{username}",
            before=None,
            after={"token_id": token.id, "name": token.name, "expires_at": token.expires_at},
            now=self.clock(),
        )
        return secret, token

    def token_expiry(
        self, expires_in_days: float | None = None, expires_at: datetime | None = None
    ) -> float | None:
        """Epoch seconds a new token expires at (``None``: never); API and CLI share it."""
        if expires_in_days is not None and expires_at is not None:
            raise InvalidInput("give expires_in_days or expires_at, not both")
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidInput("expires_at needs a time zone, e.g. 2027-01-31T18:00:00Z")
            return expires_at.timestamp()
        if expires_in_days is not None:
            if expires_in_days <= 0:
                raise InvalidInput("expires_in_days must be more than 0")
            return self.clock() + expires_in_days * 86400
        return None

    def revoke_token(self, token_id: int, actor: str) -> ApiToken:
        token = self.users.revoke_token(token_id)
        self.audit.record(
            user=actor,
            action="token.revoke",
            target=f"user:{token.username}",
            before={"token_id": token_id, "revoked": False},
            after={"token_id": token_id, "revoked": True},
            now=self.clock(),
        )
        return token

    def audit_entries(self, **filters: Any) -> list[AuditEntry]:
        return self.audit.entries(**filters)


def as_dict(value: Any) -> dict[str, Any]:
    return asdict(value)
