"""The registry of destination kinds: the exporter, the configuration schema, the admin
console and the CLI all take the kinds from :data:`SENDERS`.

Adding a kind is one module (a :class:`~node.export.sender.SenderKind`: its settings
model, built on :class:`~node.config.destinations.DestinationBase`, its sender and its
form) and one entry in :data:`_BUILT_IN` here. :func:`register` also gives the kind's
model to the configuration schema (``node.config.destinations.DESTINATION_MODELS``),
which sits below this layer; entry points that read configuration import this module
first (``node.cli.main``, ``node.app``).
"""

from __future__ import annotations

from node.config.destinations import DESTINATION_MODELS, DestinationBase, destination_kind
from node.export import dimse, stow
from node.export.sender import Sender, SenderKind

#: Every registered destination kind by its ``kind`` key.
SENDERS: dict[str, SenderKind] = {}

_BUILT_IN = (dimse.KIND, stow.KIND)


def register(kind: SenderKind) -> None:
    """Make ``kind`` known to the exporter, the configuration schema and the console."""
    known = DESTINATION_MODELS.get(kind.name)
    if known is not None and known is not kind.settings:
        raise ValueError(f"destination kind {kind.name!r} is already registered")
    SENDERS[kind.name] = kind
    DESTINATION_MODELS[kind.name] = kind.settings


def unregister(name: str) -> None:
    """Forget a kind registered with :func:`register` (built-in kinds stay)."""
    if name in (kind.name for kind in _BUILT_IN):
        raise ValueError(f"{name!r} is a built-in destination kind")
    SENDERS.pop(name, None)
    DESTINATION_MODELS.pop(name, None)


def kind_of(destination: DestinationBase) -> SenderKind:
    """The registered kind of a validated destination."""
    return SENDERS[destination_kind(destination)]


def sender_for(destination: DestinationBase, *, calling_ae: str) -> Sender:
    """A sender for ``destination``, built by its kind's factory."""
    return kind_of(destination).open(destination, calling_ae)


for _kind in _BUILT_IN:
    register(_kind)
