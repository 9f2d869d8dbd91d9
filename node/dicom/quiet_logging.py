"""pynetdicom's standard logging handlers left off an association whose lines nobody sees.

pynetdicom binds its "standard" logging handlers to every association
(``_config.LOG_HANDLER_LEVEL``): each received or sent PDU and DIMSE message is formatted
for INFO and DEBUG lines. For a C-STORE-RQ that means a copy of the whole data set
(``data_set.getvalue()``, only to print "Present"), the command set's elements converted
by pydicom and a dozen f-strings, per instance; for an A-ASSOCIATE-RQ/-AC a line per
proposed context. These handlers log nothing above INFO, and the node sets the
``pynetdicom`` logger to WARNING unless it runs at DEBUG (:mod:`node.logs`), so
:func:`quiet_standard_logging` (an ``EVT_CONN_OPEN`` handler) unbinds them from an
association opened while pynetdicom's INFO lines are off; at DEBUG they stay.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import (
    LOGGER,
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)

#: pynetdicom's standard (logging-only) handler of each notification event.
STANDARD_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def quiet_standard_logging(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: unbind pynetdicom's standard logging handlers from this
    association when its logger would drop everything they log (INFO and DEBUG)."""
    if LOGGER.isEnabledFor(logging.INFO):
        return
    assoc = event.assoc
    for event_type, handler in STANDARD_HANDLERS:
        assoc.unbind(event_type, handler)
