"""Deterministic UIDs for result objects.

Re-running a job on the same input must re-create the same UIDs, so a re-send replaces
the earlier objects in the PACS instead of adding a duplicate series. The identity of
an input is the source series UID, a hash of its sorted SOP Instance UIDs (a series
that grew later is a different input), the algorithm name and version and the
template hash. Each output UID adds its kind (``seg-series``, ``sr-instance``…).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.contract.template import ResultTemplate
    from node.contract.volume import Volume

#: Root of UUID-derived UIDs (PS3.5 B.2): "2.25." + the UUID as a decimal integer.
UUID_ROOT = "2.25."


def derive_uid(*parts: str) -> str:
    """A ``2.25`` UID that depends only on ``parts`` (order and boundaries included).

    Each part is length-prefixed before hashing, so ``("ab", "c")`` and
    ``("a", "bc")`` give different UIDs. The first 128 bits of the SHA-256 digest
    become a name-based UUID (version and variant bits set), written in decimal.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    name_based = uuid.UUID(bytes=digest.digest()[:16], version=5)
    return f"{UUID_ROOT}{name_based.int}"


def instance_set_hash(sop_instance_uids: Iterable[str]) -> str:
    """SHA-256 (hex) of the sorted, de-duplicated SOP Instance UIDs of a source series."""
    ordered = sorted(set(sop_instance_uids))
    return hashlib.sha256("\n".join(ordered).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ResultUIDs:
    """Every UID one result set needs, all derived from the same input identity."""

    input_key: tuple[str, ...]

    @classmethod
    def for_input(
        cls,
        *,
        source_series_uid: str,
        source_sop_instance_uids: Iterable[str],
        algorithm_name: str,
        algorithm_version: str,
        template_sha256: str,
    ) -> ResultUIDs:
        return cls(
            input_key=(
                source_series_uid,
                instance_set_hash(source_sop_instance_uids),
                algorithm_name,
                algorithm_version,
                template_sha256,
            )
        )

    @classmethod
    def for_volume(cls, volume: Volume, template: ResultTemplate) -> ResultUIDs:
        """UIDs for results of ``template``'s algorithm on ``volume``."""
        return cls.for_input(
            source_series_uid=volume.series_instance_uid,
            source_sop_instance_uids=volume.sop_instance_uids,
            algorithm_name=template.algorithm.name,
            algorithm_version=template.algorithm.version,
            template_sha256=template.sha256,
        )

    def _uid(self, kind: str) -> str:
        return derive_uid(*self.input_key, kind)

    @property
    def seg_series(self) -> str:
        return self._uid("seg-series")

    @property
    def seg_instance(self) -> str:
        return self._uid("seg-instance")

    @property
    def sr_series(self) -> str:
        return self._uid("sr-series")

    @property
    def sr_instance(self) -> str:
        return self._uid("sr-instance")

    def series_uid(self, tag: str) -> str:
        """Series Instance UID of the objects with file tag ``tag`` (``seg``, ``ko.sc``…)."""
        return self._uid(f"{tag}-series")

    def instance_uid(self, tag: str, *qualifiers: str) -> str:
        """SOP Instance UID of an object with file tag ``tag``, qualified e.g. per source slice."""
        return derive_uid(*self.input_key, f"{tag}-instance", *qualifiers)

    def tracking_uid(self, label_value: int) -> str:
        """Tracking UID of one segment, shared by the SEG segment and the SR group."""
        return self._uid(f"tracking-{label_value}")
