"""The DICOM file header (preamble, ``DICM``, File Meta Information) of a received instance.

Encoded with :mod:`struct` rather than by building and writing a pydicom
:class:`~pydicom.dataset.FileMetaDataset` per instance (a tenth of the receive path's CPU
time when profiled). The bytes are those :meth:`pynetdicom.events.Event.encoded_dataset`
writes before the data set (explicit VR little endian, PS3.10 7.1); a test compares them.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    return _element(element, b"UI", value + b"\x00" * (len(value) % 2))


#: (0002,0001) File Meta Information Version: OB with a 4-byte length, value 00\01.
_VERSION = struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_VERSION_NAME = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
_IMPLEMENTATION = _uid(0x0012, PYNETDICOM_IMPLEMENTATION_UID) + _element(
    0x0013, b"SH", _VERSION_NAME + b" " * (len(_VERSION_NAME) % 2)
)


def file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information of an instance in ``transfer_syntax``."""
    group = b"".join(
        (
            _VERSION,
            _uid(0x0002, sop_class_uid),
            _uid(0x0003, sop_instance_uid),
            _uid(0x0010, transfer_syntax),
            _IMPLEMENTATION,
        )
    )
    return _PREAMBLE + _element(0x0000, b"UL", struct.pack("<L", len(group))) + group
