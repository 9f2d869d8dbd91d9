"""P-DATA-TF PDUs handed to the DIMSE layer as views of the received bytes.

For every PDU it reads, pynetdicom's DUL copies the received bytes (``bytes(...)``),
builds a ``P_DATA_TF`` with one ``PresentationDataValueItem`` per value, each value a
copy, then a ``P_DATA`` primitive from those; the DIMSE layer copies each value once more
(``data[1:]``) before it appends it to the message. A 512 KiB instance arrives in four or
five 128 KiB PDUs, so that is four copies of the instance and a few dozen objects per
instance before the node sees it (a tenth of the listener's interpreter time, py-spy,
issue #14).

:func:`decode_pdata_directly` (an ``EVT_CONN_OPEN`` handler) decodes a P-DATA-TF into the
``P_DATA`` primitive directly: its values are ``memoryview`` slices of the received PDU,
which the DIMSE layer copies once into the message, as before. Everything else is
pynetdicom's: the PDU still goes through the DUL's queues and state machine (DT-2 takes
the primitive from it), and pynetdicom decodes it itself whenever that could differ:

- the association is not in Sta6 (data transfer), or events are waiting: the state
  machine may do something other than DT-2 with it;
- a handler is bound to ``EVT_DATA_RECV`` or ``EVT_PDU_RECV``, which expect pynetdicom's
  bytes and PDU object (the node binds none; pynetdicom's debug logging does);
- the items' lengths do not add up to the PDU's, or an item is empty: pynetdicom's own
  error (an A-ABORT for an invalid PDU) follows.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

#: PDU type of a P-DATA-TF, its header's length and a PDV item's length field (PS3.8 9.3.5).
_P_DATA_TF = 0x04
_PDU_HEADER = 6
_ITEM_LENGTH = struct.Struct(">L")


class _ReceivedPData:
    """What DT-2 takes from the DUL's queue of received PDUs: :meth:`to_primitive`."""

    __slots__ = ("_primitive",)

    def __init__(self, primitive: P_DATA) -> None:
        self._primitive = primitive

    def to_primitive(self) -> P_DATA:
        return self._primitive


def presentation_data_values(pdu: bytes | bytearray) -> list[tuple[int, memoryview]] | None:
    """The (context ID, value) items of an encoded P-DATA-TF, each value a view of
    ``pdu``; None unless they exactly fill it, each with its message control header."""
    view = memoryview(pdu)
    end = len(view)
    items = []
    at = _PDU_HEADER
    while at < end:
        if at + 5 > end:
            return None
        (length,) = _ITEM_LENGTH.unpack_from(view, at)
        stop = at + 4 + length
        if length < 2 or stop > end:
            return None
        items.append((view[at + 4], view[at + 5 : stop]))
        at = stop
    return items or None


def decode_pdata_directly(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: this association's P-DATA-TF PDUs reach its DIMSE layer
    as views of the received bytes (see the module docstring for when they do not)."""
    assoc = event.assoc
    dul = assoc.dul
    decode_generic = dul._decode_pdu

    def decode(bytestream: bytearray) -> tuple[Any, str]:
        if (
            bytestream[0] != _P_DATA_TF
            or dul.state_machine.current_state != "Sta6"
            or dul.event_queue.qsize()
            or assoc.get_handlers(evt.EVT_DATA_RECV)
            or assoc.get_handlers(evt.EVT_PDU_RECV)
        ):
            return decode_generic(bytestream)
        values = presentation_data_values(bytestream)
        if values is None:
            return decode_generic(bytestream)
        primitive = P_DATA()
        # As pynetdicom's to_primitive() fills it (the setter takes only [int, bytes]).
        primitive.presentation_data_value_list.extend(values)  # type: ignore[arg-type]
        return _ReceivedPData(primitive), "Evt10"

    dul._decode_pdu = decode
