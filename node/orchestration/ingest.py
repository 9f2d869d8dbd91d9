"""Accepting an instance: durable file first, then the database row.

Shared by every way instances arrive (DIMSE C-STORE, DICOMweb STOW-RS), so
each gets the same promise: success is reported only once the instance is
on disk and recorded.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pydicom

from node.errors import SpoolError
from node.orchestration.group_commit import CommitFailed, GroupCommit
from node.spool import Spool, sync_directory
from node.state.series import InstanceRecord, SeriesStore

log = logging.getLogger(__name__)


class OutOfResources(SpoolError):
    """Not enough free disk space to accept more instances."""


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class IncomingInstance:
    """Identifiers of an instance being received (no patient data)."""

    sop_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax: str
    modality: str = ""
    calling_ae: str = ""
    called_ae: str = ""


class Ingestor:
    """Writes instances to the spool and records them.

    Concurrent instances (several associations, STOW-RS requests) share their directory
    fsyncs and their transaction through :class:`~node.orchestration.group_commit.GroupCommit`.
    """

    def __init__(
        self,
        spool: Spool,
        series: SeriesStore,
        *,
        clock: Callable[[], float],
        min_free_bytes: int = 0,
        node_name: str = "",
    ) -> None:
        #: This node's identity, recorded with each instance it receives.
        self.node_name = node_name
        self._spool = spool
        self._series = series
        self._clock = clock
        self._min_free_bytes = min_free_bytes
        self.commits = GroupCommit(series, sync_directory)
        #: Called with the series (UID -> instances) a sender delivered when it ends
        #: normally (:meth:`delivered`: an association released, a STOW-RS request read):
        #: the node starts reading a series delivered whole by it then, instead of a
        #: quarter into its quiet period.
        self.on_delivered: Callable[[Mapping[str, int]], object] | None = None
        #: Called with the series UID of each instance stored (on the receiving thread:
        #: it must return at once); the node reads a series as it arrives.
        self.on_stored: Callable[[str], object] | None = None

    def accept(
        self,
        instance: IncomingInstance,
        encoded: bytes | memoryview | tuple[bytes | memoryview, ...],
    ) -> Outcome:
        """Store one encoded instance (preamble, file meta and data set).

        ``encoded`` may be a tuple of parts (the file header, the data set as received):
        they are written in order, never joined into one copy.

        Raises
        ------
        OutOfResources
            Free disk space is below the configured minimum.
        SpoolError
            The file or its database row could not be written; nothing is left behind.
        """
        stored = self._series.stored_instance(instance.sop_uid)
        if stored is not None:
            self._log_duplicate(instance, stored[0], race=False)
            if stored[0] == instance.series_uid:  # the sender is (re-)sending this series
                self._series.touch_receiving(instance.series_uid, self._clock())
            return Outcome.DUPLICATE
        size = sum(map(len, encoded)) if isinstance(encoded, tuple) else len(encoded)
        if self._min_free_bytes and self._spool.free_bytes() < self._min_free_bytes + size:
            raise OutOfResources("free disk space is below the configured minimum")
        # The file's bytes are fsynced here (concurrently with other associations); its
        # name is made durable with the row, in a commit pass shared with them.
        path = self._spool.write(
            instance.study_uid, instance.series_uid, instance.sop_uid, encoded, sync_parent=False
        )
        record = InstanceRecord(
            sop_uid=instance.sop_uid,
            series_uid=instance.series_uid,
            study_uid=instance.study_uid,
            sop_class_uid=instance.sop_class_uid,
            transfer_syntax=instance.transfer_syntax,
            path=path,
            size=size,
            modality=instance.modality,
            calling_ae=instance.calling_ae,
            called_ae=instance.called_ae,
            received_by=self.node_name,
        )
        try:
            added, reopened = self.commits.record(record, self._clock())
        except CommitFailed as exc:
            path.unlink(missing_ok=True)
            raise SpoolError(f"cannot record {path.name}: {exc}") from exc
        if not added:  # lost a race with the same instance on another association
            stored = self._series.stored_instance(instance.sop_uid)
            if stored is not None and stored[1] != path:
                path.unlink(missing_ok=True)  # this copy's file is not the kept one
            self._log_duplicate(instance, stored[0] if stored else instance.series_uid, race=True)
            return Outcome.DUPLICATE
        if reopened:
            log.info(
                "series re-opened by a late instance series_uid=%s sop_uid=%s",
                instance.series_uid,
                instance.sop_uid,
            )
        self.stored(instance.series_uid)
        return Outcome.STORED

    def stored(self, series_uid: str) -> None:
        """An instance of ``series_uid`` was stored (by this process, or reported by a
        receiver process): tell :attr:`on_stored`."""
        if self.on_stored is not None:
            try:
                self.on_stored(series_uid)
            except Exception:  # a hint for a read-ahead: never fail the instance
                log.exception("handling a stored instance failed")

    @staticmethod
    def _log_duplicate(instance: IncomingInstance, kept_series_uid: str, *, race: bool) -> None:
        """One line per instance not stored because its SOP Instance UID is known.

        The copy received first is kept. A UID reused in another series is a sender's
        error (UIDs are unique): it is logged as a warning with both series UIDs.
        """
        how = "concurrent" if race else "earlier"
        if kept_series_uid == instance.series_uid:
            log.info(
                "duplicate instance ignored sop_uid=%s series_uid=%s kept=%s_copy",
                instance.sop_uid,
                instance.series_uid,
                how,
            )
            return
        log.warning(
            "SOP Instance UID reused in another series: instance not stored in this series,"
            " the %s copy is kept sop_uid=%s series_uid=%s kept_in_series_uid=%s",
            how,
            instance.sop_uid,
            instance.series_uid,
            kept_series_uid,
        )

    def sender_cut_off(self, series: Mapping[str, int], reason: str, grace_seconds: float) -> None:
        """Hold completion of ``series`` (UID → instances this association carried) for
        ``grace_seconds``: their sender stopped without ending the association normally."""
        until = self._clock() + grace_seconds
        for series_uid, count in series.items():
            held = self._series.hold(
                [series_uid], until, f"{reason} after {count} instance(s) of this series"
            )
            if held:
                log.warning(
                    "series completion held series_uid=%s instances_in_association=%d"
                    " grace_seconds=%g reason=%s",
                    series_uid,
                    count,
                    grace_seconds,
                    reason,
                )

    def sender_finished(self, series: Mapping[str, int], note: str) -> None:
        """An association that carried ``series`` (UID -> instances) ended normally: end
        their holds, then tell :attr:`on_delivered`."""
        for series_uid in self._series.release_hold(series, note):
            log.info("series completion hold ended series_uid=%s reason=%s", series_uid, note)
        self.delivered(series)

    def delivered(self, series: Mapping[str, int]) -> None:
        """A sender finished normally (an association released, a STOW-RS request read to
        its end) after storing ``series`` (UID -> instances): tell :attr:`on_delivered`."""
        if self.on_delivered is not None:
            try:
                self.on_delivered(series)
            except Exception:  # a hint for a read-ahead: never fail the sender's end
                log.exception("handling a finished sender's series failed")

    def recover(self) -> int:
        """Record spooled files that have no database row; return how many.

        Runs at start-up. A row can be missing after a power failure (see
        :class:`~node.state.db.Database`); the file itself was fsynced before
        success was answered, so nothing accepted is lost. Leftover
        temporary files from an interrupted write are removed. In a spool shared by
        several nodes only this node's own files are looked at (its subdirectory,
        :class:`~node.spool.Spool`): another node's file without a row may be one it is
        recording right now.
        """
        partial = self._spool.remove_partial_files()
        if partial:
            log.info("removed partial spool files count=%d", partial)
        known = self._series.known_instances()
        recovered = 0
        for path in self._spool.instance_files():
            if path.stem in known:
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:
                log.warning("unreadable spool file left alone path=%s error=%s", path, exc)
                continue
            record = InstanceRecord(
                sop_uid=path.stem,
                series_uid=path.parent.name,
                study_uid=path.parent.parent.name,
                sop_class_uid=str(header.get("SOPClassUID", "")),
                transfer_syntax=str(header.file_meta.get("TransferSyntaxUID", "")),
                path=path,
                size=path.stat().st_size,
                modality=str(header.get("Modality", "")),
                received_by=self.node_name,
            )
            added, _ = self._series.record_instance(record, path.stat().st_mtime)
            recovered += int(added)
        if recovered:
            log.info("re-recorded spooled instances count=%d", recovered)
        return recovered
