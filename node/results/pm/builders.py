"""Table entry of the Parametric Map of the attribution (explainability) map."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import Prediction
from node.errors import TemplateError
from node.results.builder import BuildContext, KindBuilder
from node.results.identity import SeriesIdentity
from node.results.pm.parametric_map import build_parametric_map, build_parametric_maps_2d
from node.results.source import frame_keys


class PmapBuilder(KindBuilder):
    """One map of a 3D volume; one per frame of 2D images."""

    kind = ResultKind.PMAP
    series_number = 9021
    label = "attribution map"

    def missing_input(self, prediction: Prediction) -> str | None:
        return "the plugin gives no attribution map" if prediction.attribution is None else None

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        volume, uids = context.volume, context.uids
        # Per source image; a frame of a multi-frame 2D image is keyed "<uid>/<frame>".
        per_frame = {key: uids.instance_uid(tag, key) for key in frame_keys(volume)}
        attribution = context.prediction.attribution
        if attribution is None:
            raise TemplateError(f"result kind {str(self.kind)!r} needs an attribution map")
        if volume.is_2d:
            return list(
                build_parametric_maps_2d(
                    volume,
                    attribution,
                    context.template,
                    series=series,
                    sop_instance_uid=per_frame,
                )
            )
        return [
            build_parametric_map(
                volume,
                attribution,
                context.template,
                series=series,
                sop_instance_uid=uids.instance_uid(tag),
            )
        ]


PMAP = PmapBuilder()
