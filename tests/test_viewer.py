"""The node's results in a real viewer: OHIF 3 in headless chromium, fed by Orthanc.

Orthanc -> node -> Orthanc as in production, then OHIF (the pinned ``@ohif/app`` dist,
served with ``/dicom-web`` proxied to that Orthanc) opens the study in Debian's
chromium. The SEG must colour the phantom's lungs, in the template's colours, and
nothing else; the SR's planar measurements must be listed over the image.

Screenshots (page and viewport canvas) go to ``$AINODE_TEST_ARTIFACTS/viewer/``
(default ``test-artifacts/viewer/`` in the checkout). Needs ``/usr/bin/chromium`` and
the OHIF dist (``python -m tools.viewer.ohif``; installed here when missing).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from playwright.sync_api import BrowserContext

from node.contract.template import load_template
from tools.node_process import PROJECT_ROOT, NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import (
    instance_dataset,
    lookup_study,
    send_to_modality,
    upload_many,
    wait_for_series,
)
from tools.synthetic.chest_ct import ChestPhantomTruth, Ellipsoid, make_chest_ct
from tools.viewer import browser
from tools.viewer.browser import OhifPage
from tools.viewer.ohif import install
from tools.viewer.server import ViewerServer

pytestmark = pytest.mark.slow

TEMPLATE = load_template(PROJECT_ROOT / "dicom_sr_templates" / "ct_lungs.yaml")
RULE = {
    "name": "chest-ct",
    "match": {"Modality": "CT", "SeriesDescription": {"regex": "(?i)chest|thorax|lung"}},
    "plugin": "ct_lungs",
    "send_to": ["pacs"],
}
#: In-plane lung cross-sections shrunk / grown by these factors give the pixels that
#: must / must not be coloured (the band between holds edges, outlines, partial volume:
#: 4-7 mm here). A SEG drawn 5 mm off its place fails (tried by shifting the truth).
INSIDE, OUTSIDE = 0.9, 1.1


def artifacts_dir() -> Path:
    root = os.environ.get("AINODE_TEST_ARTIFACTS") or str(PROJECT_ROOT / "test-artifacts")
    path = Path(root) / "viewer"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Results:
    pacs: OrthancServer
    study_uid: str
    truth: ChestPhantomTruth
    sr: pydicom.Dataset


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """A 40-slice phantom sent Orthanc -> node; its SEG and SR stored back in Orthanc."""
    work = tmp_path_factory.mktemp("viewer")
    with OrthancServer(workdir=work / "orthanc", graceful_stop=False) as pacs:
        config = {
            "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
            "destinations": {
                "pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
            },
            "rules": [RULE],
        }
        with NodeProcess(config, workdir=work / "node") as node:
            pacs.client.put_modalities_id(
                "ainode", json={"AET": node.ae_title, "Host": node.host, "Port": node.dicom_port}
            )
            datasets, truth = make_chest_ct(n_slices=40, rows=256, columns=256, seed=3)
            upload_many(pacs.client, datasets)
            study_uid = str(datasets[0].StudyInstanceUID)
            study_id = lookup_study(pacs.client, study_uid)
            assert study_id is not None
            send_to_modality(pacs.client, "ainode", [study_id])
            found = wait_for_series(pacs.client, study_uid, ["SEG", "SR"], timeout=300, stable=True)
            (sr_series,) = found["SR"]
            (sr_instance,) = sr_series["Instances"]
            yield Results(pacs, study_uid, truth, instance_dataset(pacs.client, sr_instance))


@pytest.fixture(scope="module")
def viewer_url(results: Results) -> Iterator[str]:
    with ViewerServer(install(), results.pacs.url) as server:
        yield server.url


@pytest.fixture(scope="module")
def chromium() -> Iterator[BrowserContext]:
    assert Path(browser.CHROMIUM).is_file(), "apt-get install chromium"
    with browser.chromium() as context:
        yield context


@pytest.fixture
def ohif(chromium: BrowserContext, viewer_url: str) -> Iterator[OhifPage]:
    page = chromium.new_page()
    try:
        yield OhifPage(page, viewer_url)
    finally:
        page.close()


# -- pixels -----------------------------------------------------------------------------
def tinted(rgb: np.ndarray, colour: Sequence[int], *, strength: float = 12.0) -> np.ndarray:
    """Pixels pushed from grey towards ``colour`` (the CT is grey, overlays are not)."""
    pixels = rgb.astype(np.float64)
    chroma = pixels - pixels.mean(axis=-1, keepdims=True)
    target = np.asarray(colour[:3], dtype=np.float64)
    target -= target.mean()
    norm = np.linalg.norm(chroma, axis=-1)
    cosine = (chroma @ target) / (norm * np.linalg.norm(target) + 1e-9)
    return (norm >= strength) & (cosine >= 0.9)


def radius(points: np.ndarray, lung: Ellipsoid, z: float) -> np.ndarray:
    """Normalised in-plane radius of ``points`` in the lung's cross-section at ``z``
    (< 1 inside, inf where the plane misses the lung)."""
    (cx, cy, cz), (a, b, c) = lung.center_mm, lung.semi_axes_mm
    shrink = 1.0 - ((z - cz) / c) ** 2
    if shrink <= 0:
        return np.full(len(points), np.inf)
    scale = math.sqrt(shrink)
    return np.hypot((points[:, 0] - cx) / (a * scale), (points[:, 1] - cy) / (b * scale))


def canvas_points(ohif: OhifPage, shape: tuple[int, int]) -> np.ndarray:
    """Patient coordinates (LPS mm) of every canvas pixel centre, ``(rows*cols, 3)``."""
    corners = ohif.canvas_to_world(np.array([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5]]))
    origin, along_x, along_y = corners[0], corners[1] - corners[0], corners[2] - corners[0]
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    return origin + columns.reshape(-1, 1) * along_x + rows.reshape(-1, 1) * along_y


def test_seg_colours_the_lungs_and_nothing_else(ohif: OhifPage, results: Results) -> None:
    out = artifacts_dir()
    truth = results.truth
    ohif.open_study(results.study_uid)
    segments = ohif.load_seg()
    expected = {s.label: list(s.colour) for s in TEMPLATE.segments}
    assert {s["label"]: s["color"][:3] for s in segments} == expected

    ohif.open_panel("panelSegmentation")
    for label in expected:  # the segment list names each segment
        ohif.wait_for_text(label)

    index = ohif.slice_index_nearest(truth.right_lung.center_mm)
    ohif.show_slice(index)
    png, rgb = ohif.settled_canvas()
    (out / "seg-canvas.png").write_bytes(png)
    ohif.screenshot(out / "seg-page.png")

    z = ohif.image_position()[2]
    points = canvas_points(ohif, rgb.shape[:2])
    colours = {s.label_value: s.colour for s in TEMPLATE.segments}
    lungs = {1: truth.right_lung, 2: truth.left_lung}  # label values in ct_lungs.yaml
    flat = rgb.reshape(-1, 3)
    tint = {label: tinted(flat, colour) for label, colour in colours.items()}
    radii = {label: radius(points, lung, z) for label, lung in lungs.items()}
    outside = np.logical_and.reduce([r >= OUTSIDE for r in radii.values()])

    report = []
    for label in lungs:
        inside = radii[label] <= INSIDE
        other = 2 if label == 1 else 1
        own = tint[label][inside].mean()
        foreign = tint[other][inside].mean()
        report.append(
            f"label {label}: {inside.sum()} px inside, {own:.3f} own, {foreign:.3f} other"
        )
        assert inside.sum() > 1000, report
        assert own > 0.995, report
        assert foreign < 0.001, report
    stray = (tint[1] | tint[2]) & outside
    assert stray.sum() == 0, (report, f"{stray.sum()} coloured of {outside.sum()} px outside")

    # Named places that must stay grey: heart, spine, air in front of the body (the
    # phantom's layout, scaled like its lungs).
    scale = truth.right_lung.semi_axes_mm[0] / 50.0
    landmarks = {"heart": (5.0, -35.0), "spine": (0.0, 75.0), "air": (0.0, -150.0)}
    xy = ohif.world_to_canvas(np.array([[x * scale, y * scale, z] for x, y in landmarks.values()]))
    for name, (x, y) in zip(landmarks, xy, strict=True):
        patch = rgb[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4].reshape(-1, 3)
        assert not (tinted(patch, colours[1]) | tinted(patch, colours[2])).any(), name
    # Radiological convention: the patient's right lung is on the left of the screen.
    right_x, left_x = ohif.world_to_canvas(
        np.array([[*truth.right_lung.center_mm[:2], z], [*truth.left_lung.center_mm[:2], z]])
    )[:, 0]
    assert right_x < left_x


# -- SR ---------------------------------------------------------------------------------
def _meaning(item: pydicom.Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeMeaning) if names else ""


def planar_groups(sr: pydicom.Dataset) -> list[tuple[str, str, list[str]]]:
    """``(tracking id, referenced SOP Instance UID, lines OHIF should show)`` of every
    measurement group with an image region (TID 1410). OHIF writes each NUM as
    ``"<concept>: <value to 2 decimals> <unit code>"``. It merges the groups that share a
    Tracking UID (the node's planar outline group shares the segment's, as the same
    finding) and lists the NUMs of the first of them in the document: the volumetric
    group's measurements of the segment, shown at its outline."""
    groups: list[tuple[str, str, list[str], list[str]]] = []  # tracking id, uid, images, lines

    def walk(items: Sequence[pydicom.Dataset]) -> None:
        for item in items:
            children = list(item.get("ContentSequence") or [])
            if _meaning(item) == "Measurement Group":
                regions = [c for c in children if c.ValueType in ("SCOORD", "SCOORD3D")]
                groups.append(
                    (
                        next(
                            (
                                str(c.TextValue)
                                for c in children
                                if _meaning(c) == "Tracking Identifier"
                            ),
                            "",
                        ),
                        next(
                            (
                                str(c.UID)
                                for c in children
                                if _meaning(c) == "Tracking Unique Identifier"
                            ),
                            "",
                        ),
                        [
                            str(ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                            for ref in (regions[0].get("ContentSequence") or [] if regions else [])
                            if ref.ValueType == "IMAGE"
                        ],
                        [
                            f"{_meaning(c)}: {float(c.MeasuredValueSequence[0].NumericValue):.2f} "
                            f"{c.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue}"
                            for c in children
                            if c.ValueType == "NUM" and c.get("MeasuredValueSequence")
                        ],
                    )
                )
            elif children:
                walk(children)

    walk(sr.get("ContentSequence") or [])
    first_lines: dict[str, list[str]] = {}
    for _, uid, _, lines in groups:
        if lines:
            first_lines.setdefault(uid, lines)
    return [
        (tracking, images[0], first_lines.get(uid, lines))
        for tracking, uid, images, lines in groups
        if images
    ]


def test_sr_measurements_are_listed_over_their_images(ohif: OhifPage, results: Results) -> None:
    groups = planar_groups(results.sr)
    # OHIF shows only groups with image coordinates: every segment has its planar outline.
    assert groups, "the SR has no planar (SCOORD) groups, so OHIF would show nothing"
    out = artifacts_dir()
    ohif.open_study(results.study_uid)
    ohif.show_series("SR")
    for number, (tracking, sop_uid, lines) in enumerate(groups, start=1):
        ohif.show_image(sop_uid)
        ohif.wait_for_annotation_line(lines[0])
        shown = ohif.annotation_lines()
        name = re.sub(r"[^A-Za-z0-9_-]", "_", tracking) or f"group{number}"
        ohif.screenshot(out / f"sr-{number:02d}-{name}.png")
        assert all(line in shown for line in lines), (tracking, lines, shown)
