"""Table entry of the TID 1500 SR (``sr``, ``sr.<seg kind>`` for the SEG it references)."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import Prediction
from node.results.builder import BuildContext, KindBuilder, missing_findings
from node.results.identity import SeriesIdentity
from node.results.sr.findings import finding_groups
from node.results.sr.tid1500 import build_sr

log = logging.getLogger(__name__)


class SrBuilder(KindBuilder):
    """The measurement report: segments of the SEG it references, findings, radiomics."""

    kind = ResultKind.SR
    series_number = 9002
    label = "SR"

    def missing_input(self, prediction: Prediction) -> str | None:
        return missing_findings(prediction)

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        assert context.findings is not None
        seg_tag = tag.partition(".")[2] or ResultKind.SEG.value
        predecessor = context.predecessors.get(tag)
        instance_uid = context.uids.instance_uid(tag)
        if predecessor is not None and predecessor.sop_instance_uid == instance_uid:
            log.info(
                "predecessor is this input's own SR, rebuilding the same objects sr_uid=%s",
                instance_uid,
            )
            predecessor = None
        return [
            build_sr(
                context.volume,
                context.prediction,
                context.template,
                context.objects[seg_tag][0] if context.segmented else None,
                series=series,
                sop_instance_uid=instance_uid,
                revision=context.revision,
                predecessor=predecessor,
                analysis=context.analysis,
                extra_groups=finding_groups(context.findings),
            )
        ]


SR = SrBuilder()
