"""What each shipped routine declares it was validated on, against its own inputs.

Every routine in ``plugins/`` declares ``validated_on``. Its representative input
(made by the generator it was trained or validated on, as the tests give it) passes
its own input-quality gate with no failed check; the same input degraded the way a
real series can be (more noise, another photometric interpretation or pixel spacing,
another SOP class, an over-exposed photograph) fails the check named for it. The
declared values and the measurements behind them are in ``plugins/README.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.config import QualitySettings
from node.contract.assemble import assemble_volume
from node.contract.images import assemble_images
from node.contract.plugin import InferencePlugin
from node.engine.quality import Decision, assess, header_checks
from node.orchestration.registry import PluginRegistry
from plugins.ct_denoise import PLUGIN as CtDenoise
from plugins.ct_lungs import PLUGIN as CtLungs
from plugins.ct_organs import PLUGIN as CtOrgans
from plugins.ct_organs_explain import PLUGIN as CtOrgansExplain
from plugins.mg_mass_detector import PLUGIN as MgMassDetector
from plugins.op_fundus_classifier import PLUGIN as OpFundusClassifier
from plugins.rigid_registration import PLUGIN as RigidRegistration
from tools.synthetic import degraded
from tools.synthetic.abdomen_ct import make_abdomen_ct
from tools.synthetic.chest_ct import make_chest_ct
from tools.synthetic.fundus import make_fundus
from tools.synthetic.mammogram import make_mammogram

Series = list[Dataset]


def chest() -> Series:
    return make_chest_ct(n_slices=30, rows=96, columns=96, seed=2)[0]


def abdomen() -> Series:
    return make_abdomen_ct(
        n_slices=30, rows=128, columns=128, pixel_spacing_mm=3.0, slice_thickness_mm=5.0, seed=3
    )[0]


def current_ct() -> Series:
    return make_chest_ct(n_slices=30, rows=96, columns=96, pixel_spacing_mm=2.4, seed=21)[0]


def mammograms() -> Series:
    return [make_mammogram(seed, laterality="L", view="CC")[0] for seed in (4, 5)]


def fundus() -> Series:
    return [make_fundus(41, severity="severe", laterality="R")[0]]


#: Each shipped routine and its representative input (the generator it was validated on).
ROUTINES: dict[str, tuple[type[InferencePlugin], Callable[[], Series]]] = {
    "ct_lungs": (CtLungs, chest),
    "ct_organs": (CtOrgans, abdomen),
    "ct_organs_explain": (CtOrgansExplain, abdomen),
    "ct_denoise": (CtDenoise, abdomen),
    "rigid_registration": (RigidRegistration, current_ct),
    "mg_mass_detector": (MgMassDetector, mammograms),
    "op_fundus_classifier": (OpFundusClassifier, fundus),
}


def _assess(plugin: type[InferencePlugin], datasets: Sequence[Dataset]) -> Decision:
    images = str(datasets[0].Modality) in ("MG", "OP")
    volume = assemble_images(list(datasets)) if images else assemble_volume(datasets)
    assert plugin.validated_on is not None
    return assess(volume.array, volume.datasets, plugin.validated_on, QualitySettings())[1]


def _failed(plugin: type[InferencePlugin], datasets: Sequence[Dataset]) -> set[str]:
    return {check.name for check in _assess(plugin, datasets).failed}


def _pixels(datasets: Sequence[Dataset], change: Callable[[np.ndarray], np.ndarray]) -> Series:
    """Copies whose stored pixels are ``change``d (same dtype and shape)."""
    out = []
    for ds in datasets:
        changed = copy.deepcopy(ds)
        pixels = ds.pixel_array
        changed.PixelData = np.ascontiguousarray(change(pixels).astype(pixels.dtype)).tobytes()
        out.append(changed)
    return out


def test_every_shipped_routine_declares_its_validated_input() -> None:
    registry = PluginRegistry.discover()
    shipped = {info.name for info in registry.info() if info.source.startswith("plugins.")}
    assert shipped == set(ROUTINES)
    for name in shipped:
        declared = next(info for info in registry.info() if info.name == name).validated_on
        assert declared is not None, name
        assert declared.modalities and declared.sop_classes and declared.min_bits_stored


@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_the_representative_input_passes_its_own_gate(name: str) -> None:
    plugin, make = ROUTINES[name]
    decision = _assess(plugin, make())
    assert decision.action == "run" and decision.failed == (), [c.message for c in decision.failed]
    assert {c.name for c in decision.checks} >= {"modality", "sop_class", "photometric"}


#: (routine, degradation, the check it must fail); noise is three times the declared top.
DEGRADED: list[tuple[str, str, Callable[[Series], Series], str]] = [
    ("ct_lungs", "noise 110 HU", lambda d: degraded.add_noise(d, 110.0, seed=1), "noise"),
    (
        "ct_lungs",
        "contrast agent",
        lambda d: degraded.with_header(d, ContrastBolusAgent="IODINE"),
        "contrast",
    ),
    ("ct_organs", "noise 90 HU", lambda d: degraded.add_noise(d, 90.0, seed=1), "noise"),
    (
        "ct_organs",
        "10 mm slices",
        lambda d: degraded.with_header(d, SliceThickness="10"),
        "slice_thickness",
    ),
    ("ct_organs_explain", "noise 90 HU", lambda d: degraded.add_noise(d, 90.0, seed=1), "noise"),
    ("ct_denoise", "noise 120 HU", lambda d: degraded.add_noise(d, 120.0, seed=1), "noise"),
    ("ct_denoise", "8-bit data", degraded.to_8_bit, "bit_depth"),
    (
        "rigid_registration",
        "noise 110 HU",
        lambda d: degraded.add_noise(d, 110.0, seed=1),
        "noise",
    ),
    (
        "rigid_registration",
        "metal insert",
        lambda d: degraded.insert_metal(d, [12, 13, 14]),
        "metal",
    ),
    (
        "mg_mass_detector",
        "0.1 mm detector pixels",
        lambda d: degraded.with_header(d, ImagerPixelSpacing=["0.1", "0.1"]),
        "pixel_spacing",
    ),
    (
        "mg_mass_detector",
        "MONOCHROME1",
        lambda d: degraded.with_header(d, PhotometricInterpretation="MONOCHROME1"),
        "photometric",
    ),
    (
        "mg_mass_detector",
        "one view clipped through a window",
        lambda d: [*_pixels(d[:1], lambda p: np.minimum(p, np.percentile(p[p > 0], 80))), *d[1:]],
        "clipping",
    ),
    (
        "op_fundus_classifier",
        "VL photograph",
        lambda d: degraded.with_header(d, SOPClassUID="1.2.840.10008.5.1.4.1.1.77.1.4"),
        "sop_class",
    ),
    (
        "op_fundus_classifier",
        "YBR_FULL",
        lambda d: degraded.with_header(d, PhotometricInterpretation="YBR_FULL"),
        "photometric",
    ),
    (
        "op_fundus_classifier",
        "over-exposed",
        lambda d: _pixels(d, lambda p: np.minimum(p.astype(np.int32) * 3, 255)),
        "clipping",
    ),
]


@pytest.mark.parametrize(
    ("name", "what", "change", "check"), DEGRADED, ids=[f"{n}-{w}" for n, w, _, _ in DEGRADED]
)
def test_a_degraded_input_fails_the_expected_check(
    name: str, what: str, change: Callable[[Series], Series], check: str
) -> None:
    plugin, make = ROUTINES[name]
    datasets = change(make())
    if check in ("photometric", "sop_class"):  # header only: the pixels need not decode so
        assert plugin.validated_on is not None
        failed = {c.name for c in header_checks(datasets, plugin.validated_on) if not c.passed}
    else:
        failed = _failed(plugin, datasets)
    assert check in failed, (what, failed)


def test_mammogram_pixel_spacing_is_read_from_imager_pixel_spacing() -> None:
    (mammogram,) = mammograms()[:1]
    assert "PixelSpacing" not in mammogram and "ImagerPixelSpacing" in mammogram
    assert MgMassDetector.validated_on is not None
    (check,) = [
        c
        for c in header_checks([mammogram], MgMassDetector.validated_on)
        if c.name == "pixel_spacing"
    ]
    assert check.passed and check.measured == "0.5x0.5 mm (ImagerPixelSpacing)"


def test_a_series_of_another_modality_fails_the_modality_check() -> None:
    """A rule that routes too broadly: an MR head series reaches the CT lung routine and a
    chest radiograph the mammogram detector. The gate names the modality (and the SOP
    class), measured from the real series, and the default policy skips them."""
    from tools.synthetic.chest_xray import make_chest_xray
    from tools.synthetic.head_mr import make_head_mr

    head, _ = make_head_mr(seed=1)
    radiograph, _ = make_chest_xray(128, 128, nodules=1, seed=11)
    for plugin, datasets, modality in (
        (CtLungs, head, "MR"),
        (MgMassDetector, [radiograph], "DX"),
    ):
        images = str(datasets[0].Modality) == "DX"
        volume = assemble_images(list(datasets)) if images else assemble_volume(datasets)
        assert plugin.validated_on is not None
        _, decision = assess(
            volume.array, volume.datasets, plugin.validated_on, QualitySettings(on_fail="skip")
        )
        failed = {c.name: c for c in decision.failed}
        assert {"modality", "sop_class"} <= set(failed), (plugin.name, set(failed))
        assert failed["modality"].measured == modality
        assert decision.action == "skip"
        assert any(reason.startswith("modality") for reason in decision.reasons), decision.reasons
