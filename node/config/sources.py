"""PACS the node can query and pull from (DICOMweb or DIMSE)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from node.config.base import AE_TITLE_PATTERN, Port, _Strict
from node.config.destinations import DicomWebEndpoint
from node.config.network import DicomTlsClientSettings


class WorklistSourceSettings(_Strict):
    """The node as a performer for this source's UPS-RS worklist (PS3.18 §11).

    The node polls ``{url}/workitems`` for SCHEDULED workitems whose Procedure Step
    Label is ``label`` and whose task (Scheduled Workitem Code Sequence as
    ``scheme^code``, or Scheduled Station Name) is a key of ``tasks``, claims one,
    runs that rule on its inputs and completes or cancels it.
    """

    #: Procedure Step Label (0074,1204) the workitems must carry (``""``: any label).
    label: str = "AI"
    #: Seconds between searches while idle.
    poll_seconds: float = Field(10.0, gt=0)
    #: Task (``scheme^code`` or the code of the Scheduled Workitem Code Sequence, or a
    #: Scheduled Station Name code or meaning) → the name of the rule that performs it;
    #: empty: the node's own ``worklist.tasks`` (its rule names). Nothing else is claimed.
    tasks: dict[str, str] = Field(default_factory=dict)
    #: The source to fetch inputs from when an input's retrieve URL matches no
    #: configured DICOMweb source (default: this source itself).
    inputs_source: str | None = None
    #: Seconds a claimed workitem may take (fetch, job, export) before it is canceled.
    timeout_seconds: float = Field(3600.0, gt=0)


class DicomWebSourceSettings(DicomWebEndpoint):
    """A DICOMweb server the node can query (QIDO-RS) and pull from (WADO-RS)."""

    #: The AE title this PACS uses when it pushes by C-STORE: rules see it as ``calling_ae``
    #: for pulled instances, and pushes from it get the count check (``count_check``).
    ae_title: str | None = Field(None, pattern=AE_TITLE_PATTERN)
    #: Complete a series pushed by this sender as soon as the node holds as many
    #: instances as the sender reports (NumberOfSeriesRelatedInstances).
    count_check: bool = True
    #: Perform this source's UPS worklist (see :class:`WorklistSourceSettings`).
    worklist: WorklistSourceSettings | None = None


class DimseSourceSettings(_Strict):
    """A DICOM peer the node can C-FIND and retrieve from (C-GET, or C-MOVE to itself)."""

    kind: Literal["dimse"]
    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str
    port: Port
    #: ``get``: C-GET on one association; ``move``: C-MOVE to the node's own AE title
    #: (the peer must know the node's address).
    retrieve: Literal["get", "move"] = "get"
    count_check: bool = True
    timeout_seconds: float = Field(30.0, gt=0)
    #: DICOM TLS to this peer (omit for plain DICOM).
    tls: DicomTlsClientSettings | None = None


#: A source: ``kind: dicomweb`` or ``kind: dimse``.
AnySource = Annotated[DicomWebSourceSettings | DimseSourceSettings, Field(discriminator="kind")]
