"""Table entry of the Spatial Registration of a prior series."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.contract.kinds import ResultKind
from node.contract.plugin import Registration
from node.results.builder import BuildContext, KindBuilder
from node.results.identity import SeriesIdentity
from node.results.reg.registration import build_registration
from node.results.uids import derive_uid, instance_set_hash


def _registration(context: BuildContext) -> Registration:
    registration = context.prediction.registration
    assert registration is not None  # build_results drops 'reg' without one
    return registration


def _prior(context: BuildContext) -> str:
    """The prior's instances: another prior gives another object."""
    return instance_set_hash(uid for _, uid in _registration(context).source_instances)


class RegBuilder(KindBuilder):
    """The registration of ``Prediction.registration``; its UIDs depend on the prior too.

    A prediction without a registration is not refused here: :func:`build_results`
    leaves ``reg`` out of any profile (only a routine that registers a prior gives one).
    """

    kind = ResultKind.REG
    series_number = 9010
    label = "REG"

    def series_instance_uid(self, context: BuildContext, tag: str) -> str:
        return derive_uid(*context.uids.input_key, "reg-series", _prior(context))

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        return [
            build_registration(
                context.volume,
                _registration(context),
                context.template,
                series=series,
                sop_instance_uid=derive_uid(
                    *context.uids.input_key, "reg-instance", _prior(context)
                ),
            )
        ]


REG = RegBuilder()
