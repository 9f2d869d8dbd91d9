"""Table entry of the derived image as a series of the source's IOD."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import DerivedImage, Prediction
from node.errors import TemplateError
from node.results.builder import BuildContext, KindBuilder
from node.results.derived.image import build_derived_series
from node.results.identity import SeriesIdentity


class DerivedImageBuilder(KindBuilder):
    """A kind drawn from ``Prediction.derived_image``."""

    def missing_input(self, prediction: Prediction) -> str | None:
        return "the plugin gives no derived image" if prediction.derived_image is None else None

    def derived_image(self, context: BuildContext) -> DerivedImage:
        if context.prediction.derived_image is None:
            raise TemplateError(f"result kind {str(self.kind)!r} needs a derived image")
        return context.prediction.derived_image


class DerivedBuilder(DerivedImageBuilder):
    """One derived instance per source instance (a multi-frame one keeps its frames)."""

    kind = ResultKind.DERIVED
    series_number = 9023
    label = "derived"

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        volume = context.volume
        derived = self.derived_image(context)
        per_source = {uid: context.uids.instance_uid(tag, uid) for uid in volume.sop_instance_uids}
        return list(
            build_derived_series(
                volume, derived, context.template, series=series, sop_instance_uid=per_source
            )
        )


DERIVED = DerivedBuilder()
