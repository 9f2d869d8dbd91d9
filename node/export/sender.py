"""What a destination kind provides: a :class:`Sender` and the metadata of its admin form.

A kind is one module in :mod:`node.export` that defines a :class:`SenderKind` (its
configuration model, a factory of its :class:`Sender` and its console form) and one
entry in :data:`node.export.senders.SENDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from node.config.destinations import DestinationBase


@dataclass(frozen=True)
class Acknowledgement:
    """One result file the destination accepted, and how.

    ``status`` is the DICOM status of its C-STORE (0x0000, or a 0xBxxx warning), or of
    its entry in a STOW-RS response (0 or its WarningReason).
    """

    path: Path
    sop_instance_uid: str
    status: int = 0


@dataclass(frozen=True)
class ProbeAnswer:
    """A destination's answer to a probe: its status (0: it works) and what it said."""

    status: int
    message: str


class Sender(Protocol):
    """Sends the result files of one job to one destination."""

    def send(self, paths: Sequence[Path]) -> list[Acknowledgement]:
        """Send every file of ``paths``; return what the destination acknowledged.

        Raises :class:`~node.errors.ExportError` (with the DICOM or HTTP ``status``
        where the destination answered) when it refuses or cannot be reached.
        """
        ...

    def probe(self) -> ProbeAnswer:
        """Ask whether the destination answers (C-ECHO, QIDO-RS, …); raise
        :class:`~node.errors.ExportError` when it cannot be reached."""
        ...


#: Builds a kind's sender for one destination; ``calling_ae`` is the node's AE title.
SenderFactory = Callable[[Any, str], Sender]


@dataclass(frozen=True)
class FormField:
    """One input of a kind's console form; ``name`` may be dotted (``auth.type``)."""

    name: str
    label: str
    input: Literal["text", "number", "password", "select"] = "text"
    required: bool = False
    placeholder: str = ""
    default: str = ""
    options: tuple[str, ...] = ()
    #: Layout hint: ``narrow`` (a port), ``grow`` (a host or URL) or none.
    width: Literal["", "narrow", "grow"] = ""
    #: Extra ``<input>`` attributes, e.g. ``{"min": "1", "max": "65535"}``.
    attributes: dict[str, str] = field(default_factory=dict)


#: The send time-out every network destination kind's form offers.
TIMEOUT_FIELD = FormField(
    "timeout_seconds",
    "Time-out (s)",
    input="number",
    default="30",
    width="narrow",
    attributes={"min": "1", "step": "any"},
)


@dataclass(frozen=True)
class DestinationForm:
    """How the console shows and edits destinations of one kind."""

    #: The kind's name in the form's kind selector and the destinations table.
    label: str
    #: One line under the selector: what this kind does.
    summary: str
    fields: tuple[FormField, ...]
    #: Label of the table's connection test button.
    test_label: str = "Test"
    #: Settings the form does not show that an edit keeps (e.g. ``tls``).
    keep_on_edit: tuple[str, ...] = ()


@dataclass(frozen=True)
class SenderKind:
    """One kind of destination: its ``kind`` key, configuration model, sender and form."""

    name: str
    settings: type[DestinationBase]
    open: SenderFactory
    form: DestinationForm
