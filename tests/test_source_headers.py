"""Headers prepared for the builders share the source's raw non-text elements, and the
results built from them are the results built from fully converted headers, byte for byte.

Sources are written to files and read back (so their elements are raw, as at load) in
three character sets, explicit and implicit VR, with and without the Type 2 attributes.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from node.contract.assemble import assemble_volume
from node.contract.template import load_template_by_name
from node.results import build_results
from node.results.encode import encode_file
from node.results.source import TYPE_2_PATIENT_STUDY, buildable_header, buildable_volume
from tests.support.datasets import (
    PER_BUILD,
    align_per_build,
    dataset_differences,
    save_little_endian,
)
from tests.test_results import lung_prediction
from tools.synthetic.chest_ct import make_chest_ct

#: Differ between any two builds.

#: (Specific Character Set, patient name, a description) in each character set.
_TEXTS = {
    "latin1": ("ISO_IR 100", "Müller^Jürgen", "Thorax natif, poumons (réf.)"),
    "utf8": ("ISO_IR 192", "Wang^XiaoDong=王^小東", "胸部 CT Ωmega"),
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "胸部ＣＴ"),
}


def _write_sources(
    folder: Path, charset: str, implicit: bool, type_2: bool
) -> tuple[list[Path], object]:
    datasets, truth = make_chest_ct(
        n_slices=6, rows=48, columns=48, pixel_spacing_mm=7.0, slice_thickness_mm=12.0
    )
    specific, name, text = _TEXTS[charset]
    folder.mkdir()
    paths = []
    for index, dataset in enumerate(datasets):
        dataset.SpecificCharacterSet = specific
        dataset.PatientName = name
        dataset.StudyDescription = text
        dataset.SeriesDescription = text
        dataset.InstitutionName = text
        block = dataset.private_block(0x0009, "AINODE TEST", create=True)
        block.add_new(0x01, "LO", text)
        block.add_new(0x02, "DS", "1.5")
        if not type_2:
            for keyword in TYPE_2_PATIENT_STUDY[2:]:  # keep the patient's name and ID
                if keyword in dataset:
                    delattr(dataset, keyword)
            for keyword in ("Manufacturer", "PositionReferenceIndicator"):
                if keyword in dataset:
                    delattr(dataset, keyword)
        paths.append(save_little_endian(dataset, folder / f"{index:03d}.dcm", implicit=implicit))
    return paths, truth


def _results(paths: list[Path], truth: object, convert_all: bool) -> list[Dataset]:
    sources = [pydicom.dcmread(path) for path in paths]
    if convert_all:  # what the headers were before: every element converted
        for source in sources:
            for _ in source:
                pass
            assert not any(isinstance(e, RawDataElement) for e in source._dict.values())
    volume = assemble_volume(sources)
    if not convert_all:
        header = buildable_volume(volume).datasets[0]
        assert sum(isinstance(e, RawDataElement) for e in header._dict.values()) > 20
    results = build_results(
        volume,
        lung_prediction(volume, truth),
        load_template_by_name("ct_lungs"),  # type: ignore[arg-type]
    )
    return [results.seg, results.sr]


@pytest.mark.parametrize("type_2", [True, False], ids=["type2", "anonymised"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("charset", sorted(_TEXTS))
def test_results_from_shared_raw_elements_equal_those_from_converted_headers(
    tmp_path: Path, charset: str, implicit: bool, type_2: bool
) -> None:
    paths, truth = _write_sources(tmp_path / "series", charset, implicit, type_2)
    fast = _results(paths, truth, convert_all=False)
    reference = _results(paths, truth, convert_all=True)
    for mine, theirs in zip(fast, reference, strict=True):
        align_per_build(mine, theirs)
        written = encode_file(mine)  # the SR's Image Library written as held, encoded
        assert written == encode_file(theirs)
        assert dataset_differences(mine, theirs, PER_BUILD) == []
        assert encode_file(mine) == written  # and as items, once read
        assert mine.PatientName == _TEXTS[charset][1]
        assert mine.SpecificCharacterSet == _TEXTS[charset][0]
        if not type_2:
            assert mine.PatientSex == "" and mine.AccessionNumber == ""


def test_header_shares_non_text_raw_elements_and_decodes_text(tmp_path: Path) -> None:
    paths, _ = _write_sources(tmp_path / "series", "latin1", implicit=False, type_2=True)
    source = pydicom.dcmread(paths[0])
    header = buildable_header(source)
    rows = source._dict[pydicom.tag.Tag("Rows")]
    assert isinstance(rows, RawDataElement)
    assert header._dict[pydicom.tag.Tag("Rows")] is rows  # shared, still raw
    assert header.Rows == 48
    name = header._dict[pydicom.tag.Tag("PatientName")]
    assert isinstance(name, DataElement)  # decoded with the source's ISO_IR 100
    assert str(name.value) == "Müller^Jürgen"
    assert "SpecificCharacterSet" not in header


def test_header_of_an_implicit_vr_source_decodes_text_and_reads_the_rest_by_dictionary(
    tmp_path: Path,
) -> None:
    paths, _ = _write_sources(tmp_path / "series", "utf8", implicit=True, type_2=True)
    source = pydicom.dcmread(paths[0])
    header = buildable_header(source)
    rows = header._dict[pydicom.tag.Tag("Rows")]
    assert isinstance(rows, RawDataElement) and rows.VR is None  # shared, still raw
    assert header["Rows"].VR == "US" and header.Rows == 48
    text = header._dict[pydicom.tag.Tag("StudyDescription")]
    assert isinstance(text, DataElement) and text.value == "胸部 CT Ωmega"
    pixels = header._dict[pydicom.tag.Tag("PixelData")]  # OB or OW: converted here
    assert isinstance(pixels, DataElement) and pixels.VR == "OW"


def test_the_character_set_is_worked_out_once_per_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom converts Specific Character Set again on each look-up: a header's text
    elements (5 here, ~11 in a scanner's header) share one look-up."""
    from node.results import source as source_module

    paths, _ = _write_sources(tmp_path / "series", "japanese", implicit=False, type_2=True)
    volume = assemble_volume(pydicom.dcmread(path) for path in paths)
    looked_up: list[int] = []
    real = source_module._charset_key

    def counted(dataset: Dataset) -> tuple[str, ...]:
        looked_up.append(id(dataset))
        return real(dataset)

    monkeypatch.setattr(source_module, "_charset_key", counted)
    headers = buildable_volume(volume).datasets
    assert sorted(looked_up) == sorted({id(d) for d in volume.datasets})  # each once
    assert {str(h.PatientName) for h in headers} == {_TEXTS["japanese"][1]}
