"""The UPS state machine of PS3.4 Annex CC (Table CC.1.1-2) and its failure/warning statuses.

Pure functions over ``(state, stored Transaction UID)``: each either returns the new state,
returns a :class:`UpsWarning` (the request changes nothing, e.g. completing a COMPLETED
workitem), or raises :class:`UpsError` with the DIMSE status and the PS3.18 HTTP status.
The UPS-RS routes and the DIMSE SCP both call these, so both answer alike.

======================  ==========  ==============  ==========  ==========
event                   SCHEDULED   IN PROGRESS     CANCELED    COMPLETED
======================  ==========  ==============  ==========  ==========
claim (-> IN PROGRESS)  IN PROGRESS C302            C300        C300
-> SCHEDULED            C303        C303            C303        C303
complete, right UID     C310        COMPLETED/C304  C300        B306
complete, wrong UID     C310        C301            C300        C300
cancel, right UID       C310        CANCELED        B304        C311
cancel, wrong UID       C310        C301            C300        C311
request cancellation    CANCELED    (event)         B304        C311
update (N-SET)          ok [#]_     ok/C301         C300        C300
======================  ==========  ==============  ==========  ==========

.. [#] A SCHEDULED workitem is updated without a Transaction UID.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class UpsState(StrEnum):
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"


FINAL_STATES = frozenset({UpsState.CANCELED, UpsState.COMPLETED})

# DIMSE statuses (PS3.4 CC.2, pynetdicom's UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS).
SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_SOP_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
UNABLE_TO_PROCESS = 0xC000
DELETION_LOCK_NOT_GRANTED = 0xB301
ALREADY_CANCELED = 0xB304
ALREADY_COMPLETED = 0xB306
MAY_NO_LONGER_BE_UPDATED = 0xC300
WRONG_TRANSACTION_UID = 0xC301
ALREADY_IN_PROGRESS = 0xC302
ONLY_SCHEDULED_BY_CREATE = 0xC303
FINAL_STATE_NOT_MET = 0xC304
NO_SUCH_UPS = 0xC307
UNKNOWN_RECEIVING_AE = 0xC308
NOT_CREATED_SCHEDULED = 0xC309
NOT_IN_PROGRESS = 0xC310
ALREADY_COMPLETED_FAILURE = 0xC311
PERFORMER_UNREACHABLE = 0xC312
PERFORMER_WONT_CANCEL = 0xC313

#: PS3.18 §11 HTTP status for each failure (what a UPS-RS client sees).
HTTP_STATUS: dict[int, int] = {
    INVALID_ATTRIBUTE_VALUE: 400,
    MISSING_ATTRIBUTE: 400,
    UNABLE_TO_PROCESS: 400,
    NOT_CREATED_SCHEDULED: 400,
    ONLY_SCHEDULED_BY_CREATE: 400,
    DUPLICATE_SOP_INSTANCE: 409,
    MAY_NO_LONGER_BE_UPDATED: 409,
    WRONG_TRANSACTION_UID: 409,
    ALREADY_IN_PROGRESS: 409,
    FINAL_STATE_NOT_MET: 409,
    NOT_IN_PROGRESS: 409,
    ALREADY_COMPLETED_FAILURE: 409,
    PERFORMER_WONT_CANCEL: 409,
    NO_SUCH_UPS: 404,
    UNKNOWN_RECEIVING_AE: 404,
    PERFORMER_UNREACHABLE: 503,
}

#: The standard's wording of each status (used in messages and Warning headers).
REASONS: dict[int, str] = {
    INVALID_ATTRIBUTE_VALUE: "Invalid attribute value",
    DUPLICATE_SOP_INSTANCE: "A workitem with this SOP Instance UID already exists",
    MISSING_ATTRIBUTE: "Missing attribute",
    UNABLE_TO_PROCESS: "Unable to process",
    DELETION_LOCK_NOT_GRANTED: "Deletion lock not granted",
    ALREADY_CANCELED: "The UPS is already in the requested state of CANCELED",
    ALREADY_COMPLETED: "The UPS is already in the requested state of COMPLETED",
    MAY_NO_LONGER_BE_UPDATED: "The UPS may no longer be updated",
    WRONG_TRANSACTION_UID: "The correct Transaction UID was not provided",
    ALREADY_IN_PROGRESS: "The UPS is already IN PROGRESS",
    ONLY_SCHEDULED_BY_CREATE: "The UPS may only become SCHEDULED via N-CREATE",
    FINAL_STATE_NOT_MET: "The UPS has not met final state requirements for the requested"
    " state change",
    NO_SUCH_UPS: "Specified SOP Instance UID does not exist or is not a UPS Instance managed"
    " by this SCP",
    UNKNOWN_RECEIVING_AE: "Receiving AE-TITLE is unknown to this SCP",
    NOT_CREATED_SCHEDULED: "The provided value of UPS State was not SCHEDULED",
    NOT_IN_PROGRESS: "The UPS is not yet in the IN PROGRESS state",
    ALREADY_COMPLETED_FAILURE: "The UPS is already COMPLETED",
    PERFORMER_UNREACHABLE: "The performer cannot be contacted",
    PERFORMER_WONT_CANCEL: "Performer chooses not to cancel",
}


class UpsError(Exception):
    """A refused UPS operation: ``status`` (DIMSE) and ``http`` (UPS-RS) say which."""

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        self.http = HTTP_STATUS.get(status, 400)
        self.reason = REASONS.get(status, "Unable to process")
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


@dataclass(frozen=True)
class UpsWarning:
    """The request is accepted but changes nothing (or less than asked)."""

    status: int

    @property
    def reason(self) -> str:
        return REASONS[self.status]


def claim(state: str) -> UpsState:
    """SCHEDULED -> IN PROGRESS (the caller stores the claimer's Transaction UID)."""
    if state == UpsState.SCHEDULED:
        return UpsState.IN_PROGRESS
    if state == UpsState.IN_PROGRESS:
        raise UpsError(ALREADY_IN_PROGRESS)
    raise UpsError(MAY_NO_LONGER_BE_UPDATED, f"the workitem is {state}")


def finish(
    state: str,
    target: str,
    *,
    stored_uid: str | None,
    given_uid: str | None,
    final_requirements_met: bool = True,
) -> UpsState | UpsWarning:
    """IN PROGRESS -> COMPLETED or CANCELED by the holder of the Transaction UID."""
    right = bool(given_uid) and given_uid == stored_uid
    if target == UpsState.SCHEDULED:
        raise UpsError(ONLY_SCHEDULED_BY_CREATE)
    if target == UpsState.IN_PROGRESS:
        return claim(state)
    if target not in (UpsState.COMPLETED, UpsState.CANCELED):
        raise UpsError(INVALID_ATTRIBUTE_VALUE, f"unknown Procedure Step State {target!r}")
    if state == UpsState.SCHEDULED:
        raise UpsError(NOT_IN_PROGRESS)
    if state == UpsState.IN_PROGRESS:
        if not right:
            raise UpsError(WRONG_TRANSACTION_UID)
        if not final_requirements_met:
            raise UpsError(FINAL_STATE_NOT_MET)
        return UpsState(target)
    if state == UpsState.COMPLETED:
        if target == UpsState.CANCELED:
            raise UpsError(ALREADY_COMPLETED_FAILURE)
        if right:
            return UpsWarning(ALREADY_COMPLETED)
        raise UpsError(MAY_NO_LONGER_BE_UPDATED, "the workitem is COMPLETED")
    # CANCELED
    if target == UpsState.CANCELED and right:
        return UpsWarning(ALREADY_CANCELED)
    raise UpsError(MAY_NO_LONGER_BE_UPDATED, "the workitem is CANCELED")


def change_state(
    state: str,
    target: str,
    *,
    stored_uid: str | None,
    given_uid: str | None,
    final_requirements_met: bool = True,
) -> UpsState | UpsWarning:
    """The N-ACTION Change State (PUT ``…/state``): claim, complete or cancel."""
    if not given_uid:
        raise UpsError(MISSING_ATTRIBUTE, "the Transaction UID (0008,1195) is required")
    if target == UpsState.IN_PROGRESS:
        return claim(state)
    return finish(
        state,
        target,
        stored_uid=stored_uid,
        given_uid=given_uid,
        final_requirements_met=final_requirements_met,
    )


def request_cancel(state: str) -> UpsState | UpsWarning | None:
    """N-ACTION Request Cancel: the new state, a warning, or ``None`` (IN PROGRESS: the
    performer is told, by the Cancel Requested event, and decides)."""
    if state == UpsState.SCHEDULED:
        return UpsState.CANCELED
    if state == UpsState.IN_PROGRESS:
        return None
    if state == UpsState.CANCELED:
        return UpsWarning(ALREADY_CANCELED)
    raise UpsError(ALREADY_COMPLETED_FAILURE)


def update(state: str, *, stored_uid: str | None, given_uid: str | None) -> None:
    """N-SET: a SCHEDULED workitem by anyone, an IN PROGRESS one by its Transaction UID."""
    if state == UpsState.SCHEDULED:
        if given_uid:
            raise UpsError(WRONG_TRANSACTION_UID, "a SCHEDULED workitem has no Transaction UID")
        return
    if state == UpsState.IN_PROGRESS:
        if not given_uid or given_uid != stored_uid:
            raise UpsError(WRONG_TRANSACTION_UID)
        return
    raise UpsError(MAY_NO_LONGER_BE_UPDATED, f"the workitem is {state}")
