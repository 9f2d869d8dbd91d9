"""Retention plumbing: size result files, delete what the policy chose, audit it.

:func:`run_pass` is what the CLI (``ainode retention``) and the scheduler call.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from node.config import RetentionSettings
from node.retention import Deletion, plan
from node.state.audit import AuditLog
from node.state.connection import Connection
from node.state.dicom_audit import DicomAudit, EventType
from node.state.retention import RetentionStore

log = logging.getLogger(__name__)

AUDIT_ACTION = "retention.delete"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is missing)."""
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def free_bytes(path: Path) -> int:
    """Free space on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def run_pass(
    db: Connection,
    settings: RetentionSettings,
    *,
    now: float,
    free: int | None,
    dry_run: bool,
    user: str = "retention",
) -> list[dict[str, Any]]:
    """Plan (and unless ``dry_run`` carry out) one retention pass; one dict per series."""
    store = RetentionStore(db)
    rows = store.usage()
    dirs = {usage.series_uid: paths for usage, paths in rows}
    usages = [
        replace(u, result_bytes=sum(tree_bytes(d) for d in dirs[u.series_uid])) for u, _ in rows
    ]
    report = []
    for deletion in plan(usages, now=now, settings=settings, free_bytes=free):
        entry = _describe(deletion)
        if not dry_run:
            _delete(store, deletion, dirs[deletion.usage.series_uid], now=now)
            AuditLog(db).record(
                user=user,
                action=AUDIT_ACTION,
                target=f"series:{deletion.usage.series_uid}",
                before=None,
                after=entry,
                now=now,
            )
            DicomAudit(db).record(
                EventType.INSTANCES_DELETED,
                actor=user,
                study_uid=deletion.usage.study_uid,
                series_uid=deletion.usage.series_uid,
                instances=entry["instances"],
                detail=(
                    f"{deletion.reason}: {'spool' if deletion.spool else ''}"
                    f"{' and ' if deletion.spool and deletion.results else ''}"
                    f"{'results' if deletion.results else ''}, {deletion.bytes} bytes"
                ),
                at=now,
            )
        report.append(entry)
    return report


def _describe(deletion: Deletion) -> dict[str, Any]:
    usage = deletion.usage
    return {
        "study_uid": usage.study_uid,
        "series_uid": usage.series_uid,
        "reason": deletion.reason,
        "spool": deletion.spool,
        "results": deletion.results,
        "instances": usage.instance_count if deletion.spool else 0,
        "bytes": deletion.bytes,
        "last_finished": usage.last_finished,
        "last_job_failed": usage.last_job_failed,
    }


def _delete(
    store: RetentionStore, deletion: Deletion, result_dirs: list[Path], *, now: float
) -> None:
    uid = deletion.usage.series_uid
    if deletion.spool:
        for path in store.instance_paths(uid):
            path.unlink(missing_ok=True)
    if deletion.results:
        for directory in result_dirs:
            shutil.rmtree(directory, ignore_errors=True)
    store.mark_purged(uid, spool=deletion.spool, results=deletion.results, now=now)
    log.info(
        "retention deleted series=%s spool=%s results=%s bytes=%d reason=%s",
        uid,
        deletion.spool,
        deletion.results,
        deletion.bytes,
        deletion.reason,
    )
