"""Table entry of the GSPS: segment outlines, or the graphics of findings."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import Prediction
from node.results.builder import BuildContext, KindBuilder, missing_findings
from node.results.identity import SeriesIdentity
from node.results.pr.findings import build_findings_gsps
from node.results.pr.gsps import build_gsps


class GspsBuilder(KindBuilder):
    """Outlines of the segments; with findings (or without a label map) their graphics too."""

    kind = ResultKind.GSPS
    series_number = 9005
    label = "GSPS"

    def missing_input(self, prediction: Prediction) -> str | None:
        return missing_findings(prediction)

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        findings, analysis = context.findings, context.analysis
        assert findings is not None
        if findings or analysis is None:
            return [
                build_findings_gsps(
                    findings,
                    analysis,
                    series=series,
                    sop_instance_uid=context.uids.instance_uid(tag),
                    tracking_uids=context.tracking_uids,
                )
            ]
        return [
            build_gsps(
                analysis,
                series=series,
                sop_instance_uid=context.uids.instance_uid(tag),
                tracking_uids=context.tracking_uids,
            )
        ]


GSPS = GspsBuilder()
