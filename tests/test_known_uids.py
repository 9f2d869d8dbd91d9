"""Registry UIDs are checked once per process; every other UID exactly as pydicom does."""

from __future__ import annotations

import warnings

import pydicom.uid
import pytest
from pydicom import config
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import StoragePresentationContexts, build_context

from node.dicom import known_uids


def test_every_registry_uid_passes_both_of_pydicoms_checks() -> None:
    """What lets a registry UID skip them: neither could fail on it."""
    for uid in known_uids.REGISTRY:
        validate_value("UI", uid, config.RAISE)
        assert len(uid) <= 64 and pydicom.uid.RE_VALID_UID.match(uid)  # is_valid's test


def test_a_registry_uid_is_validated_once_per_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    known_uids.install()
    seen: list[tuple[str, int]] = []

    def counting(vr: str, value: object, mode: int, validator: object = None) -> None:
        seen.append((str(value), mode))

    monkeypatch.setattr(known_uids, "_passed", set())
    remembering = known_uids.remembering(counting)
    for _ in range(3):
        remembering("UI", CTImageStorage, config.WARN)
        remembering("UI", "1.2.3.4", config.WARN)  # not in the registry: every time
    remembering("UI", CTImageStorage, config.RAISE)
    assert seen.count((CTImageStorage, config.WARN)) == 1
    assert seen.count(("1.2.3.4", config.WARN)) == 3
    assert seen.count((CTImageStorage, config.RAISE)) == 1


def test_invalid_uids_still_warn_and_raise_after_install() -> None:
    known_uids.install()
    for _ in range(2):
        with pytest.warns(UserWarning, match="Invalid value for VR UI"):
            UID("1.02.3", validation_mode=config.WARN)
        with pytest.raises(ValueError, match="Invalid value for VR UI"):
            UID("1.2.x", validation_mode=config.RAISE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert UID(CTImageStorage, validation_mode=config.RAISE) == CTImageStorage


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (CTImageStorage, True),
        (ExplicitVRLittleEndian, True),
        ("1.2.826.0.1.3680043.8.498.1", True),  # not in the registry: the regex decides
        ("1.02", False),
        ("1." + "2" * 63, False),  # 65 characters
        ("", False),
    ],
)
def test_is_valid_answers_as_pydicom_does(value: str, valid: bool) -> None:
    known_uids.install()
    assert UID(value, validation_mode=config.IGNORE).is_valid is valid


def test_install_is_idempotent() -> None:
    known_uids.install()
    validate, is_valid = pydicom.uid.validate_value, vars(UID)["is_valid"]
    known_uids.install()
    assert pydicom.uid.validate_value is validate
    assert vars(UID)["is_valid"] is is_valid


def test_an_association_request_decodes_to_the_same_contexts() -> None:
    """A request of some 120 contexts (as storescu proposes) gives the same primitive with the
    remembered checks as pynetdicom gives without them."""
    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title = "STORESCU"
    request.called_ae_title = "AINODE"
    request.maximum_length_received = 131072
    request.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"
    proposed = [build_context(c.abstract_syntax) for c in StoragePresentationContexts]
    for number, context in enumerate(proposed):
        context.context_id = 2 * number + 1
        request.presentation_context_definition_list.append(context)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(request)
    encoded = pdu.encode()
    known_uids.install()
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(encoded)
    contexts = decoded.to_primitive().presentation_context_definition_list
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
        (c.context_id, c.abstract_syntax, c.transfer_syntax) for c in proposed
    ]
    assert len(contexts) == len(StoragePresentationContexts) > 100
    assert decoded.encode() == encoded
