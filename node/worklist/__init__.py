"""The node as a UPS worklist (PS3.4 Annex CC, PS3.18 §11 "Worklist Service").

The stable interface the UPS-RS routes (:mod:`node.api.worklist`) and the DIMSE SCP build on:

- :class:`node.worklist.service.WorklistService`: every UPS operation (create, retrieve,
  update, change state, request cancel, search, subscribe, unsubscribe, suspend); raises
  :class:`node.worklist.states.UpsError` (``.status`` DIMSE, ``.http`` UPS-RS, ``.reason``)
  or returns a :class:`node.worklist.states.UpsWarning` for a request that changes nothing.
- :mod:`node.worklist.states`: the state table and the status codes.
- :class:`node.worklist.events.EventBus`: ``bus.listen(callback)``; each
  :class:`~node.worklist.events.UpsEvent` names its subscribers (AE titles) and renders as
  DICOM JSON (``event.dicom_json()``).
- :mod:`node.worklist.dataset`: workitem DICOM JSON helpers and QIDO-style matching.
- :class:`node.worklist.performer.WorklistPerformer`: the node performs its own workitems.

``Node.worklist`` (the service) and ``Node.worklist_events`` (the bus) are wired in
:mod:`node.app`.
"""
