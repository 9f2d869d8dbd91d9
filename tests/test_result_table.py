"""The table of result builders: one entry per kind, in build order, and a working seam.

Adding a kind means one builder module and one table entry; these tests hold the table
to every :class:`ResultKind` and show that a builder registered in a test (a kind the
node does not know) is built, gets its own series and is listed by a KO.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.contract.assemble import assemble_volume
from node.contract.kinds import BUILD_ORDER, ResultKind
from node.contract.plugin import Attribution, DerivedImage, Prediction
from node.contract.volume import Volume
from node.results import build_results, load_template_by_name, series_description
from node.results.builder import BuildContext, BuilderTable, KindBuilder, ResultBuilder
from node.results.identity import SeriesIdentity
from node.results.plan import missing_input
from node.results.sc.overlay import build_sc_series
from node.results.table import BUILDERS
from tests.test_results import lung_prediction
from tools.synthetic.chest_ct import make_chest_ct


@pytest.fixture(scope="module")
def chest() -> tuple[Volume, Prediction]:
    datasets, truth = make_chest_ct(
        n_slices=6, rows=48, columns=48, pixel_spacing_mm=8.0, slice_thickness_mm=10.0
    )
    volume = assemble_volume(datasets)
    return volume, lung_prediction(volume, truth)


def test_every_result_kind_has_exactly_one_builder_in_build_order() -> None:
    kinds = [builder.kind for builder in BUILDERS]
    assert len(kinds) == len(set(kinds)) == len(ResultKind)
    assert set(kinds) == set(ResultKind)
    assert tuple(kinds) == BUILD_ORDER
    assert all(isinstance(builder, ResultBuilder) for builder in BUILDERS)
    # Series numbers are the kinds' own: no two series of one result share one.
    numbers = [builder.series_number for builder in BUILDERS]
    assert len(numbers) == len(set(numbers))


def test_a_table_refuses_two_builders_of_one_kind() -> None:
    with pytest.raises(ValueError, match="'seg' has two builders"):
        BuilderTable([*BUILDERS, BUILDERS[ResultKind.SEG]])


def test_availability_is_each_builders_predicate() -> None:
    nothing = Prediction()
    attribution = Prediction(attribution=Attribution(np.zeros((1, 2, 2)), "saliency", "lung"))
    derived = Prediction(derived_image=DerivedImage(np.zeros((1, 2, 2)), "x"))
    assert missing_input(nothing, ResultKind.SEG) == "the plugin gives no label map"
    assert missing_input(nothing, ResultKind.PMAP) == "the plugin gives no attribution map"
    assert missing_input(attribution, ResultKind.HEATMAP_SC) is None
    assert missing_input(nothing, ResultKind.DERIVED_SC) == "the plugin gives no derived image"
    assert missing_input(derived, ResultKind.DERIVED) is None
    assert missing_input(nothing, ResultKind.SR) == (
        "the plugin gives no label map, classifications or detections"
    )
    assert missing_input(nothing, ResultKind.KO) is None
    for builder in BUILDERS:
        assert missing_input(nothing, ResultKind(builder.kind)) == builder.missing_input(nothing)


class OutlineCopies(KindBuilder):
    """A kind the node does not have: the SC overlay again, in a series of its own."""

    kind = "outline_copies"
    series_number = 9099
    label = "outline copies"

    def missing_input(self, prediction: Prediction) -> str | None:
        return None if prediction.label_map is not None else "no label map"

    def build(self, context: BuildContext, tag: str, series: SeriesIdentity) -> list[Dataset]:
        assert context.analysis is not None
        return list(
            build_sc_series(
                context.analysis,
                series=series,
                sop_instance_uid={
                    uid: context.uids.instance_uid(tag, uid)
                    for uid in context.volume.sop_instance_uids
                },
            )
        )


def test_a_kind_registered_in_the_table_is_built_in_its_own_series_and_listed(
    chest: tuple[Volume, Prediction],
) -> None:
    volume, prediction = chest
    template = load_template_by_name("ct_lungs")
    tags = ["seg", "outline_copies", "ko.outline_copies+seg"]
    # The default table does not know the kind.
    with pytest.raises(ValueError, match="unknown result kind 'outline_copies'"):
        build_results(volume, prediction, template, tags=tags)
    table = BUILDERS.with_builder(OutlineCopies(), before=ResultKind.KO)
    results = build_results(volume, prediction, template, tags=tags, builders=table)
    assert list(results.objects) == tags  # build order: SEG, the new kind, then the KO
    copies = results.objects["outline_copies"]
    assert 0 < len(copies) <= volume.shape[0]  # slices that show a segment
    assert {str(d.SeriesInstanceUID) for d in copies} == {results.uids.series_uid("outline_copies")}
    assert {int(d.SeriesNumber) for d in copies} == {9099}
    assert {str(d.SeriesDescription) for d in copies} == {
        series_description(template, "outline copies", 1)
    }
    assert "outline_copies" in results.seconds
    (ko,) = results.objects["ko.outline_copies+seg"]
    listed = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in ko.ContentSequence
        if "ReferencedSOPSequence" in item
    }
    assert listed == {str(d.SOPInstanceUID) for d in [*copies, *results.objects["seg"]]}


def test_every_object_of_a_series_carries_one_series_identity(
    chest: tuple[Volume, Prediction],
) -> None:
    volume, prediction = chest
    template = load_template_by_name("ct_lungs")
    results = build_results(volume, prediction, template, tags=["seg", "sr", "gsps", "sc"])
    for tag, datasets in results.objects.items():
        builder = BUILDERS.of_tag(tag)
        expected = SeriesIdentity.of(
            template,
            series_instance_uid=results.uids.series_uid(tag),
            series_number=builder.series_number,
            series_description=series_description(template, builder.label, 1),
        )
        for dataset in datasets:
            assert (
                SeriesIdentity(
                    series_instance_uid=str(dataset.SeriesInstanceUID),
                    series_number=int(dataset.SeriesNumber),
                    series_description=str(dataset.SeriesDescription),
                    manufacturer=str(dataset.Manufacturer),
                    manufacturer_model_name=str(dataset.ManufacturerModelName),
                    software_versions=str(dataset.SoftwareVersions),
                    device_uid=str(dataset.DeviceUID),
                )
                == expected
            ), tag
