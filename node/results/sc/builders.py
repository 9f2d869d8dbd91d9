"""Table entries of the Secondary Captures: overlays, heat maps, the derived image."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import Prediction
from node.errors import TemplateError
from node.results.builder import BuildContext, KindBuilder, missing_findings
from node.results.derived.builders import DerivedImageBuilder
from node.results.identity import SeriesIdentity
from node.results.sc.derived import build_derived_sc_series
from node.results.sc.findings import build_findings_sc_series, capture_keys
from node.results.sc.heatmap import build_heatmap_sc_series
from node.results.sc.overlay import NOT_FOR_DIAGNOSIS, build_sc_series
from node.results.source import frame_keys


class ScBuilder(KindBuilder):
    """Copies of the source images with segments (or findings) burned in."""

    kind = ResultKind.SC
    series_number = 9006
    label = f"SC {NOT_FOR_DIAGNOSIS}"

    def missing_input(self, prediction: Prediction) -> str | None:
        return missing_findings(prediction)

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        findings, analysis, uids = context.findings, context.analysis, context.uids
        assert findings is not None
        if findings or analysis is None:
            return list[Dataset](
                build_findings_sc_series(
                    findings,
                    analysis,
                    series=series,
                    sop_instance_uid={
                        key: uids.instance_uid(tag, key) for key in capture_keys(findings, analysis)
                    },
                )
            )
        return list(
            build_sc_series(
                analysis,
                series=series,
                sop_instance_uid={
                    uid: uids.instance_uid(tag, uid) for uid in context.volume.sop_instance_uids
                },
            )
        )


class HeatmapScBuilder(KindBuilder):
    """The attribution map blended over the source images, one capture per frame."""

    kind = ResultKind.HEATMAP_SC
    series_number = 9022
    label = f"heat map {NOT_FOR_DIAGNOSIS}"

    def missing_input(self, prediction: Prediction) -> str | None:
        return "the plugin gives no attribution map" if prediction.attribution is None else None

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        volume = context.volume
        # Per source image; a frame of a multi-frame 2D image is keyed "<uid>/<frame>".
        per_frame = {key: context.uids.instance_uid(tag, key) for key in frame_keys(volume)}
        if context.prediction.attribution is None:
            raise TemplateError(f"result kind {str(self.kind)!r} needs an attribution map")
        return list(
            build_heatmap_sc_series(
                volume,
                context.prediction.attribution,
                context.template,
                series=series,
                sop_instance_uid=per_frame,
            )
        )


class DerivedScBuilder(DerivedImageBuilder):
    """The derived image as Secondary Capture, one per source image or frame."""

    kind = ResultKind.DERIVED_SC
    series_number = 9024
    label = "derived SC"

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        volume = context.volume
        per_frame = {key: context.uids.instance_uid(tag, key) for key in frame_keys(volume)}
        derived = self.derived_image(context)
        return list(
            build_derived_sc_series(
                volume, derived, context.template, series=series, sop_instance_uid=per_frame
            )
        )


SC = ScBuilder()
HEATMAP_SC = HeatmapScBuilder()
DERIVED_SC = DerivedScBuilder()
