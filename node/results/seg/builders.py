"""Table entries of the SEG kinds: BINARY, LABELMAP and FRACTIONAL Segmentation."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import Prediction
from node.results.builder import BuildContext, KindBuilder
from node.results.identity import SeriesIdentity
from node.results.seg.segmentation import build_seg


class SegBuilder(KindBuilder):
    """A SEG of the label map, of one Segmentation Type."""

    def __init__(
        self, kind: ResultKind, segmentation_type: str, series_number: int, label: str
    ) -> None:
        self.kind = kind
        self.segmentation_type = segmentation_type
        self.series_number = series_number
        self.label = label

    def missing_input(self, prediction: Prediction) -> str | None:
        return "the plugin gives no label map" if prediction.label_map is None else None

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        analysis = context.analysis
        assert analysis is not None  # build_results refuses SEG kinds without a label map
        return [
            build_seg(
                context.volume,
                context.prediction,
                context.template,
                series=series,
                sop_instance_uid=context.uids.instance_uid(tag),
                revision=context.revision,
                tracking_uids=context.tracking_uids,
                segmentation_type=self.segmentation_type,
                segment_numbers=analysis.segment_numbers,
                boxes=analysis.boxes,
            )
        ]


SEG = SegBuilder(ResultKind.SEG, "BINARY", 9001, "SEG")
LABELMAP_SEG = SegBuilder(ResultKind.LABELMAP_SEG, "LABELMAP", 9003, "SEG labelmap")
FRACTIONAL_SEG = SegBuilder(ResultKind.FRACTIONAL_SEG, "FRACTIONAL", 9004, "SEG probability")
