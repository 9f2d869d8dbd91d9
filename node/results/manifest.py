"""What a job wrote: ``manifest.json`` lists each result file with its size and SHA-256.

The worker writes every result file durably (:func:`node.spool.write_durably`),
then the manifest, then marks the job's results written. Before sending, the
exporter checks the files against it (:func:`check_results`): a file missing,
cut short or changed means the results are not the ones the job built, and the
job is built again instead of sending them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom

from node.spool import write_durably

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(result_dir: Path, files: Sequence[Path]) -> Path:
    """Record ``files`` (in ``result_dir``) with their sizes and digests, durably."""
    document = {
        "files": {
            path.name: {"size": path.stat().st_size, "sha256": _digest(path)} for path in files
        }
    }
    target = result_dir / MANIFEST
    text = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
    write_durably(target, lambda handle: handle.write(text))
    return target


def check_results(result_dir: Path) -> str | None:
    """Why the job's result files are not whole, or None when they are.

    Without a manifest (results written by an older node, or placed by hand)
    every ``.dcm`` file must at least read as a whole DICOM file.
    """
    if not result_dir.is_dir():
        return f"result directory {result_dir} is missing"
    manifest = result_dir / MANIFEST
    if not manifest.exists():
        for path in sorted(result_dir.glob("*.dcm")):
            try:
                pydicom.dcmread(path)
            except Exception as exc:
                return f"{path.name} cannot be read: {exc}"
        return None
    try:
        listed = json.loads(manifest.read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} cannot be read: {exc}"
    for name, expected in sorted(listed.items()):
        path = result_dir / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} were written"
        if _digest(path) != expected["sha256"]:
            return f"{name} differs from the file that was written"
    return None


def clear_results(result_dir: Path) -> list[str]:
    """Remove result files and leftovers of an earlier, interrupted run of the same job."""
    removed = []
    for pattern in ("*.dcm", ".*.tmp", MANIFEST):
        for path in result_dir.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)
