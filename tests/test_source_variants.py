"""Sources as real PACS send them: research-anonymised, and in Japanese, Korean or Chinese.

Every kind of result is built from a small chest CT that lacks the Type 2 patient and
study attributes anonymisers remove (issue 11, item 6), and from the same CT with a
non-ASCII patient name and descriptions in ``['', 'ISO 2022 IR 87']`` (Japanese),
``['', 'ISO 2022 IR 149']`` (Korean), ``GB18030`` and ``ISO_IR 192`` (item 7). Every object
must pass dciodvfy (0 errors), write the missing Type 2 attributes empty, carry the
source's Specific Character Set and read back with the source's names. A slow test sends
an anonymised and a Japanese series through a real node process into Orthanc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.config import BUILT_IN_CHEST_RULE
from node.contract.assemble import assemble_volume
from node.contract.kinds import ATTRIBUTION_KINDS, DERIVED_KINDS, ResultKind, file_name
from node.contract.plugin import DerivedImage, Prediction, Registration
from node.contract.volume import Volume
from node.results import build_results, load_template, load_template_by_name
from node.results.source import TYPE_2_PATIENT_STUDY, UNICODE, set_character_set
from tests.support.dcmtk import storescu
from tests.support.pacs import one_result_each, orthanc_and_node_process
from tests.support.validators import dcentvfy_output, dciodvfy_output
from tests.test_conformance import (
    CAD_TAGS,
    EVERY_TAG,
    KNOWN_WARNINGS,
    TEMPLATES,
    _attribution,
    _cad_prediction,
    _probabilities,
)
from tests.test_results import lung_prediction
from tools.orthanc_rest import find_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

#: Names and descriptions per character set (PS3.5 Annex H, I and J examples and alike).
CHARACTER_SETS: dict[str, tuple[str | list[str], str, str]] = {
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "胸部 CT 単純"),
    "korean": (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "흉부 CT"),
    "chinese": ("GB18030", "Wang^XiaoDong=王^小东=", "胸部 CT 平扫"),
    "unicode": ("ISO_IR 192", "Gómez^José=Γεώργιος", "Thorax Übersicht"),
}
#: What a research anonymiser removes (the Type 2 patient and study attributes), and Type 2
#: attributes of other modules a derived image copies from its source.
ANONYMISED = (*TYPE_2_PATIENT_STUDY, "Manufacturer", "PositionReferenceIndicator")
DICOMDIR_WARNING = "Missing attribute or value that would be needed to build DICOMDIR"


def anonymised(dataset: Dataset) -> None:
    for keyword in ANONYMISED:
        if keyword in dataset:
            delattr(dataset, keyword)


def in_character_set(name: str) -> Callable[[Dataset], None]:
    charset, patient_name, description = CHARACTER_SETS[name]

    def change(dataset: Dataset) -> None:
        dataset.SpecificCharacterSet = charset
        dataset.PatientName = patient_name
        dataset.StudyDescription = description
        dataset.SeriesDescription = f"Chest {description}"
        dataset.InstitutionName = description

    return change


VARIANTS: dict[str, Callable[[Dataset], None]] = {
    "anonymised": anonymised,
    **{name: in_character_set(name) for name in CHARACTER_SETS},
}


@dataclass(frozen=True)
class Results:
    source: Dataset
    paths: dict[str, list[Path]]
    anonymised: bool
    source_paths: list[Path]


def _registration(volume: Volume) -> Registration:
    return Registration(
        matrix=np.eye(4),
        source_frame_of_reference_uid=pydicom.uid.generate_uid(),
        target_frame_of_reference_uid=volume.frame_of_reference_uid,
        source_study_instance_uid=pydicom.uid.generate_uid(),
        source_series_instance_uid=pydicom.uid.generate_uid(),
        source_instances=((str(volume.datasets[0].SOPClassUID), pydicom.uid.generate_uid()),),
        metric="test",
        metric_value=1.0,
    )


def build_every_kind(variant: str, directory: Path) -> Results:
    """Every result kind from a 10-slice chest CT changed by ``VARIANTS[variant]``,
    written to files under ``directory``."""
    datasets, truth = make_chest_ct(
        n_slices=10, rows=64, columns=64, pixel_spacing_mm=6.0, slice_thickness_mm=24.0
    )
    for dataset in datasets:
        VARIANTS[variant](dataset)
    files = write_series(datasets, directory / "source")
    volume = assemble_volume([pydicom.dcmread(p) for p in files])
    segmentation = lung_prediction(volume, truth)
    segmentation.probabilities = _probabilities(segmentation.label_map, (1, 2))
    lungs = load_template_by_name("ct_lungs")
    runs = {
        "segmentation": build_results(volume, segmentation, lungs, tags=EVERY_TAG),
        "maps": build_results(
            volume,
            Prediction(attribution=_attribution(volume, lungs)),
            lungs,
            tags=sorted(k.value for k in ATTRIBUTION_KINDS),
        ),
        "derived": build_results(
            volume,
            Prediction(derived_image=DerivedImage(volume.array * 0.5, "Test filter")),
            load_template_by_name("ct_denoise"),
            tags=sorted(k.value for k in DERIVED_KINDS),
        ),
        "cad": build_results(
            volume,
            _cad_prediction(volume),
            load_template(TEMPLATES / "cad_findings.yaml"),
            tags=CAD_TAGS,
        ),
        "reg": build_results(
            volume,
            Prediction(registration=_registration(volume)),
            load_template_by_name("rigid_registration"),
            tags=["reg"],
        ),
    }
    paths: dict[str, list[Path]] = {}
    for run, results in runs.items():
        out = directory / run
        out.mkdir()
        for tag, dataset in results.tagged():
            path = out / file_name(tag, str(dataset.SOPInstanceUID))
            dataset.save_as(path, enforce_file_format=True)
            paths.setdefault(f"{run}/{tag}", []).append(path)
    return Results(
        pydicom.dcmread(files[0], stop_before_pixels=True), paths, variant == "anonymised", files
    )


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Results:
    return build_every_kind(request.param, tmp_path_factory.mktemp(request.param))


def test_every_kind_is_built(results: Results) -> None:
    kinds = {ResultKind(tag.split("/")[1].partition(".")[0]) for tag in results.paths}
    assert kinds == set(ResultKind)


def test_every_object_passes_dciodvfy(results: Results) -> None:
    for tag, paths in results.paths.items():
        for path in sorted({paths[0], paths[-1]}):
            report = dciodvfy_output(path)
            assert [line for line in report if line.startswith("Error")] == [], tag
            # An empty Patient ID, Study Date… is what an anonymised source has: dciodvfy
            # notes that a DICOMDIR would want them, nothing else.
            warnings = [
                line
                for line in report
                if line.startswith("Warning")
                and not any(known in line for known in KNOWN_WARNINGS)
                and not (results.anonymised and DICOMDIR_WARNING in line)
            ]
            assert warnings == [], f"{tag}: {warnings}"


def test_dcentvfy_finds_no_errors_across_source_and_results(results: Results) -> None:
    # Not the REG: it references a prior this test makes up.
    every = [p for tag, paths in results.paths.items() if tag != "reg/reg" for p in paths]
    report = dcentvfy_output([*results.source_paths, *every])
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], errors[:5]


def test_missing_type_2_attributes_are_written_empty(results: Results) -> None:
    for tag, paths in results.paths.items():
        written = pydicom.dcmread(paths[0], stop_before_pixels=True)
        for keyword in TYPE_2_PATIENT_STUDY:
            assert keyword in written, f"{tag} {keyword}"
            if keyword not in results.source:
                assert written[keyword].is_empty, f"{tag} {keyword}"
            else:
                assert written[keyword].value == results.source[keyword].value, f"{tag} {keyword}"


def test_character_set_and_names_are_the_sources(results: Results) -> None:
    source = results.source
    for tag, paths in results.paths.items():
        written = pydicom.dcmread(paths[0], stop_before_pixels=True)
        assert written.get("SpecificCharacterSet") == source.get("SpecificCharacterSet"), tag
        if "PatientName" in source:
            assert str(written.PatientName) == str(source.PatientName), tag
        if "StudyDescription" in source:
            assert written.StudyDescription == source.StudyDescription, tag


def test_node_text_outside_the_source_character_set_is_written_as_unicode() -> None:
    """ASCII and Kanji stay in ISO 2022 IR 87; a character JIS X 0208 lacks (é) makes the
    object Unicode rather than a '?' on the wire."""
    japanese = ["", "ISO 2022 IR 87"]
    for text, expected in [
        ("AI lungs SEG", japanese),
        ("肺 AI 結果", japanese),
        ("Lésion pulmonaire", UNICODE),
    ]:
        dataset = Dataset()
        dataset.PatientName = "Yamada^Tarou=山田^太郎"
        dataset.SeriesDescription = text
        set_character_set(dataset, japanese, "test")
        assert dataset.SpecificCharacterSet == expected, text
        buffer = BytesIO()
        dataset.save_as(buffer, implicit_vr=False, little_endian=True)
        back = pydicom.dcmread(BytesIO(buffer.getvalue()), force=True)
        assert back.SeriesDescription == text
        assert str(back.PatientName) == "Yamada^Tarou=山田^太郎"


@pytest.mark.slow
def test_anonymised_and_japanese_series_through_the_node_into_orthanc(tmp_path: Path) -> None:
    """A real node process: storescu a Japanese and an anonymised chest CT, read the SEG
    and SR back from Orthanc (its REST API decodes the names)."""
    rule = {**BUILT_IN_CHEST_RULE, "send_to": ["pacs"]}
    series = {}
    for seed, variant in [(31, "japanese"), (32, "anonymised")]:
        datasets, _ = make_chest_ct(n_slices=40, seed=seed, series_description="Chest")
        for dataset in datasets:
            VARIANTS[variant](dataset)
        series[variant] = (datasets[0], write_series(datasets, tmp_path / variant))
    with orthanc_and_node_process(tmp_path, [rule]) as (pacs, node):
        for _, files in series.values():
            storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
        japanese, _ = series["japanese"]
        objects = one_result_each(pacs, str(japanese.StudyInstanceUID), ["SEG", "SR"])
        for modality, dataset in objects.items():
            assert dataset.SpecificCharacterSet == ["", "ISO 2022 IR 87"], modality
            assert str(dataset.PatientName) == str(japanese.PatientName), modality
            (found,) = find_series(pacs.client, str(japanese.StudyInstanceUID), modality)
            tags = pacs.client.get_instances_id_simplified_tags(found["Instances"][0])
            assert tags["PatientName"] == str(japanese.PatientName), modality
            assert tags["StudyDescription"] == str(japanese.StudyDescription), modality
        anonymous, _ = series["anonymised"]
        objects = one_result_each(pacs, str(anonymous.StudyInstanceUID), ["SEG", "SR"])
        for modality, dataset in objects.items():
            for keyword in TYPE_2_PATIENT_STUDY:
                assert dataset[keyword].is_empty, f"{modality} {keyword}"
