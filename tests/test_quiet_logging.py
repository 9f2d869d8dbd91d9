"""pynetdicom's standard logging handlers are left off while its INFO lines are dropped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association

from node.dicom.quiet_logging import STANDARD_HANDLERS, quiet_standard_logging


@pytest.fixture
def pynetdicom_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    yield logger
    logger.setLevel(level)


def _standard_handlers_bound(assoc: Association) -> list[object]:
    return [
        handler
        for event, standard in STANDARD_HANDLERS
        for handler, _ in assoc.get_handlers(event)
        if handler is standard
    ]


def _acceptor() -> Association:
    return Association(AE(ae_title="AINODE"), mode="acceptor")


def test_they_are_unbound_when_pynetdicom_logs_warnings_only(
    pynetdicom_level: logging.Logger,
) -> None:
    pynetdicom_level.setLevel(logging.WARNING)
    assoc = _acceptor()
    assert len(_standard_handlers_bound(assoc)) == 4  # pynetdicom binds them by default

    def own(event: object) -> None: ...

    assoc.bind(evt.EVT_DIMSE_RECV, own)
    quiet_standard_logging(SimpleNamespace(assoc=assoc))
    assert _standard_handlers_bound(assoc) == []
    # Any other handler of the same events stays.
    assert [h for h, _ in assoc.get_handlers(evt.EVT_DIMSE_RECV)] == [own]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_they_stay_when_their_lines_would_be_logged(
    pynetdicom_level: logging.Logger, level: int
) -> None:
    pynetdicom_level.setLevel(level)
    assoc = _acceptor()
    quiet_standard_logging(SimpleNamespace(assoc=assoc))
    assert len(_standard_handlers_bound(assoc)) == 4
