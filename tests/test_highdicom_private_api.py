"""The private highdicom APIs the node relies on, checked against the installed highdicom.

pyproject.toml caps highdicom below its next minor version because of these; when a new
highdicom is allowed, a failure here names the node file to update.
"""

from __future__ import annotations

import inspect

import highdicom as hd
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.results.sr.tid1500 import MeasurementReportSR
from tools.synthetic.chest_ct import make_chest_ct

#: The modules that use highdicom's private APIs.
PMAP = "node/results/pm/parametric_map.py"
TID1500 = "node/results/sr/tid1500.py"


def _changed(name: str, user: str, todo: str) -> str:
    return f"highdicom {hd.__version__} changed {name}; update {user}: {todo}"


def test_is_multiframe_image_tells_a_multi_frame_iod_by_sop_class() -> None:
    """The Parametric Map builder (nominal_plane) asks highdicom whether highdicom will read a
    source's geometry from functional groups, i.e. whether its IOD is multi-frame."""
    todo = (
        "nominal_plane must know whether highdicom treats the source as a multi-frame "
        "IOD (geometry from functional groups) and build the one-frame view accordingly"
    )
    try:
        from highdicom._standard_utils import is_multiframe_image
    except ImportError:
        pytest.fail(_changed("_standard_utils.is_multiframe_image", PMAP, todo))
    assert list(inspect.signature(is_multiframe_image).parameters) == ["dataset"], _changed(
        "the signature of is_multiframe_image(dataset)", PMAP, todo
    )
    cases = {
        "1.2.840.10008.5.1.4.1.1.77.1.5.1": True,  # Ophthalmic Photography 8 Bit (OP)
        "1.2.840.10008.5.1.4.1.1.2.1": True,  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.2": False,  # CT Image
        "1.2.840.10008.5.1.4.1.1.7": False,  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.1.1": False,  # Digital X-Ray (for presentation)
    }
    for sop_class_uid, multi_frame in cases.items():
        dataset = Dataset()
        dataset.SOPClassUID = sop_class_uid
        # Only the IOD counts, not how many frames this instance has.
        dataset.NumberOfFrames = 1
        assert bool(is_multiframe_image(dataset)) is multi_frame, _changed(
            f"is_multiframe_image for SOP class {sop_class_uid}", PMAP, todo
        )


def _small_report() -> tuple[list[Dataset], hd.sr.MeasurementReport]:
    images = make_chest_ct(n_slices=2, rows=16, columns=16)[0]
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID()),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion"),
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Volume, value=1.0, unit=codes.UCUM.CubicMillimeter
                    )
                ],
            )
        ],
    )
    return images, report


def test_comprehensive_3d_sr_keeps_its_content_tree_in_content() -> None:
    """node/results/sr/tid1500.py (MeasurementReportSR.content) overrides highdicom's ``content``
    property and returns ``self._content``, which highdicom's constructor must set."""
    todo = (
        "MeasurementReportSR.content must return the typed content tree highdicom "
        "built in its constructor (and rebuild it after add_image_library)"
    )
    content = getattr(hd.sr.Comprehensive3DSR, "content", None)
    assert isinstance(content, property), _changed(
        "Comprehensive3DSR.content (no longer a property)", TID1500, todo
    )
    images, report = _small_report()
    arguments = {
        "evidence": images,
        "content": report,
        "series_instance_uid": hd.UID(),
        "series_number": 1,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
    }
    moved = _changed("where Comprehensive3DSR keeps its content tree (_content)", TID1500, todo)
    plain = hd.sr.Comprehensive3DSR(**arguments)
    assert "_content" in vars(plain), moved
    assert plain._content is plain.content, moved
    ours = MeasurementReportSR(**arguments)
    assert isinstance(ours.content, hd.sr.ContentSequence), moved
    # After add_image_library the tree is rebuilt from the dataset and shows the library.
    library = hd.sr.ImageLibrary(images)[0]
    ours.add_image_library(library)
    names = [item.name.value for item in ours.content[0].ContentSequence]
    assert "111028" in names, _changed("MeasurementReport.from_sequence", TID1500, todo)
    written = [str(i.ConceptNameCodeSequence[0].CodeValue) for i in ours.ContentSequence]
    assert names == written
