"""Durable storage of received instances, exactly as they were encoded.

``spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` is written to a temporary
file in the same directory, fsynced, renamed into place and the directory
fsynced: a reader sees either nothing or the whole file, and a crash never
leaves a partial instance under its final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from node.errors import SpoolError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def sync_directory(directory: Path) -> None:
    """fsync ``directory``: the names created or renamed in it so far are durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_durably(
    final: Path, write: Callable[[BinaryIO], object], *, sync_parent: bool = True
) -> None:
    """Write a file with ``write(handle)`` so that ``final`` is whole or absent.

    The data goes to a temporary file beside ``final`` (``.<name>.<random>.tmp``),
    is fsynced, renamed over ``final`` and the directory fsynced. On any failure
    the temporary file is removed and the error raised. With ``sync_parent=False`` the
    caller fsyncs the directory (:func:`sync_directory`, once for several files) before
    it relies on the name.
    """
    temporary = final.with_name(f".{final.stem}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        if sync_parent:
            sync_directory(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (also safe as a path part)."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


class Spool:
    """The directory tree of received instances.

    ``node_dir``: in a spool shared by several nodes (one filesystem mounted at the same
    path on each), this node's own subdirectory. It writes only there, and at start-up
    looks only there for files to re-record or partial files to remove, so it never
    touches a file another node is writing or has not recorded yet.
    """

    #: Series directories remembered as made (a receiver writes hundreds of instances into
    #: each; asking the filesystem each time cost a system call per instance).
    KNOWN_DIRECTORIES = 1024

    def __init__(self, root: Path, node_dir: str | None = None) -> None:
        self.root = root
        self.own = root / node_dir if node_dir else root
        self.own.mkdir(parents=True, exist_ok=True)
        self._made: set[Path] = set()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for name, uid in (("study", study_uid), ("series", series_uid), ("SOP instance", sop_uid)):
            if not is_valid_uid(uid):
                raise SpoolError(f"invalid {name} UID {uid[:80]!r}")
        return self.own / study_uid / series_uid / f"{sop_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        data: bytes | memoryview | tuple[bytes | memoryview, ...],
        *,
        sync_parent: bool = True,
    ) -> Path:
        """Write ``data`` durably and return its final path.

        ``data`` may be a tuple of parts, written one after the other (a received data set
        after its file header, without joining them into one copy first).

        With ``sync_parent=False`` the file's bytes are fsynced but its name is durable
        only once the caller has synced its directory (:func:`sync_directory`).

        Raises :class:`~node.errors.SpoolError` on any failure, after removing
        the temporary file.
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        parts = data if isinstance(data, tuple) else (data,)

        def write() -> None:
            write_durably(final, lambda handle: handle.writelines(parts), sync_parent=sync_parent)

        try:
            if final.parent in self._made:
                try:
                    write()
                    return final
                except FileNotFoundError:  # removed since (retention, an operator): again
                    self._made.discard(final.parent)
            final.parent.mkdir(parents=True, exist_ok=True)
            if len(self._made) >= self.KNOWN_DIRECTORIES:
                self._made.clear()
            self._made.add(final.parent)
            write()
        except OSError as exc:
            raise SpoolError(f"cannot write {final.name}: {exc.strerror or exc}") from exc
        return final

    def instance_files(self) -> Iterator[Path]:
        """Every instance file this node spooled (``<study>/<series>/<sop>.dcm``)."""
        return self.own.glob("*/*/*.dcm")

    def remove_partial_files(self) -> int:
        """Delete temporary files this node left by a crash mid-write; return how many."""
        removed = 0
        for path in self.own.glob("*/*/.*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed
