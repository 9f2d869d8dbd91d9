"""C-STORE responses encoded with :mod:`struct` instead of through pydicom.

pynetdicom turns every response primitive into a pydicom command-set ``Dataset`` (each
element set, validated and converted), encodes it with pydicom's writer and recomputes
the group length by encoding it twice: about 30 % of the GIL-held time of a C-STORE on
the node (py-spy, issue #14 round 5). A plain C-STORE-RSP (both UIDs, a status, no
Offending Element or Error Comment) is six fixed elements, so :func:`encode_store_response`
packs them directly, byte for byte what pynetdicom sends (a test compares them), and
:func:`respond_fast` (an ``EVT_CONN_OPEN`` handler) routes such responses through it.
Every other message, and any association with an ``EVT_DIMSE_SENT`` handler bound
(which expects pynetdicom's message object) other than pynetdicom's standard logging
handler (which logs nothing for a C-STORE-RSP), takes pynetdicom's own path.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

#: (0000,0100) Command Field of a C-STORE-RSP; (0000,0800) "no data set".
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
#: An implicit VR little endian US element: tag, length 2, value.
_US = struct.Struct("<HHLH")


def _uid(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def encode_store_response(
    sop_class_uid: str, message_id: int, status: int, sop_instance_uid: str
) -> bytes:
    """The implicit VR little endian command set of a C-STORE-RSP (PS3.7 9.3.1.2)."""
    body = b"".join(
        (
            _uid(0x0002, sop_class_uid),
            _US.pack(0x0000, 0x0100, 2, _C_STORE_RSP),
            _US.pack(0x0000, 0x0120, 2, message_id),
            _US.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
            _US.pack(0x0000, 0x0900, 2, status),
            _uid(0x1000, sop_instance_uid),
        )
    )
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def _plain_store_response(primitive: Any) -> bool:
    """Whether ``primitive`` is a C-STORE-RSP :func:`encode_store_response` encodes."""
    return (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.AffectedSOPClassUID is not None
        and primitive.AffectedSOPInstanceUID is not None
        and isinstance(primitive.Status, int)
        and primitive.OffendingElement is None
        and primitive.ErrorComment is None
    )


def respond_fast(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: this association's plain C-STORE responses are packed
    by :func:`encode_store_response` and sent as one P-DATA (pynetdicom's fragmenting
    gives the same single PDV for a command set this short)."""
    assoc = event.assoc
    dimse = assoc.dimse
    generic = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if not _plain_store_response(primitive) or any(
            handler is not standard_dimse_sent_handler
            for handler, _ in assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            generic(primitive, context_id)
            return
        encoded = encode_store_response(
            primitive.AffectedSOPClassUID,
            primitive.MessageIDBeingRespondedTo,
            primitive.Status,
            primitive.AffectedSOPInstanceUID,
        )
        max_pdu = dimse.maximum_pdu_size
        if max_pdu and len(encoded) > max_pdu - 6:  # would be fragmented: pynetdicom's way
            generic(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg
