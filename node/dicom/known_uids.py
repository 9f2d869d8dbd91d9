"""pydicom's UID checks done once per standard UID, not on every ``UID(...)``.

Every ``pydicom.uid.UID(value)`` validates its value (a length check and a regular
expression, under ``config.settings.reading_validation_mode``), and pynetdicom asks
``UID.is_valid`` (another regular expression) besides. It does both several times for
each SOP class and transfer syntax an association proposes: a ``storescu``
A-ASSOCIATE-RQ (128 contexts, ~400 UIDs) took 20 ms of CPU to decode and convert, held
under the GIL while the other associations wait (py-spy: a quarter of the GIL-held
samples of a 4-association run, issue #14 round 6).

:func:`install` makes both answers remembered for the DICOM standard's UID registry
(pydicom's ``UID_dictionary``: SOP classes, transfer syntaxes, well-known instances; a
fixed set of ~500 valid UIDs): ``validate_value`` returns at once for a registry UID that
already passed in the same validation mode, and ``is_valid`` is True for a registry UID
without the regular expression. Every other value (the instances' own UIDs) and the first
validation of each registry UID go through pydicom as before: same results, same
warnings and errors, pure functions of the string.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pydicom.uid
from pydicom._uid_dict import UID_dictionary

_installed = threading.Lock()
#: The registry's UIDs (all valid: a test checks both of pydicom's checks on each).
REGISTRY = frozenset(UID_dictionary)
#: (UID, validation mode) pairs of registry UIDs that passed validation in that mode.
_passed: set[tuple[str, int]] = set()


def remembering(validate_value: Callable[..., None]) -> Callable[..., None]:
    """``validate_value`` that skips a registry UID already validated in the same mode."""

    def validate_known_uids(
        vr: str, value: Any, validation_mode: int, validator: Callable[..., Any] | None = None
    ) -> None:
        if vr != "UI" or validator is not None or not isinstance(value, str):
            validate_value(vr, value, validation_mode, validator)
            return
        key = (str(value), validation_mode)
        if key in _passed:
            return
        validate_value(vr, value, validation_mode, validator)  # raises or warns if invalid
        if key[0] in REGISTRY:
            _passed.add(key)

    validate_known_uids.remembers = True  # type: ignore[attr-defined]
    return validate_known_uids


def registry_aware(is_valid: property) -> property:
    """``UID.is_valid`` that answers True for a registry UID without its regex."""
    check = is_valid.fget
    assert check is not None

    def is_valid_or_registered(self: pydicom.uid.UID) -> bool:
        return self in REGISTRY or bool(check(self))

    is_valid_or_registered.__doc__ = check.__doc__
    is_valid_or_registered.remembers = True  # type: ignore[attr-defined]
    return property(is_valid_or_registered)


def install() -> None:
    """Route ``pydicom.uid.UID``'s validation through :func:`remembering` and its
    ``is_valid`` through :func:`registry_aware` (once per process)."""
    with _installed:
        current = pydicom.uid.validate_value
        if not getattr(current, "remembers", False):
            pydicom.uid.validate_value = remembering(current)
        is_valid = vars(pydicom.uid.UID)["is_valid"]
        if not getattr(is_valid.fget, "remembers", False):
            pydicom.uid.UID.is_valid = registry_aware(is_valid)  # type: ignore[method-assign, assignment]
