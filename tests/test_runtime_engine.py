"""The execution engine: exact reorientation, resampling, slab-wise argmax, OOM plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRange

from node.contract.assemble import assemble_volume
from node.contract.geometry import acquisition_plane, check_axcodes, reorientation
from node.engine import inference as engine
from node.engine.inference import (
    ExecutionOptions,
    IntensityWindow,
    ModelSpec,
    logits_to_labels,
    model_grid_shape,
    preprocess,
    segment,
)
from tools.synthetic.abdomen_ct import KIDNEYS, LIVER, SPLEEN, make_abdomen_ct


class Threshold(torch.nn.Module):
    """Two logits: class 1 where the windowed value is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


SPEC = ModelSpec(
    spacing_mm=(4.0, 4.0, 4.0),
    window=IntensityWindow(-1000.0, 1000.0),
    labels=("background", "dense"),
    roi_size=(32, 32, 32),
    sw_batch_size=2,
)


@pytest.mark.parametrize("flip", [False, True])
def test_ras_reorientation_puts_the_liver_on_the_patients_right(flip: bool) -> None:
    datasets, truth = make_abdomen_ct(
        n_slices=40, rows=48, columns=64, seed=2, flip_left_right=flip
    )
    volume = assemble_volume(datasets)
    orient = reorientation(volume.affine, "RAS")
    labels = orient.to_model(torch.from_numpy(truth.labels))
    # RAS axis 0 grows towards the patient's right: liver (right) above spleen (left).
    liver_x = torch.nonzero(labels == LIVER).float().mean(0)[0]
    spleen_x = torch.nonzero(labels == SPLEEN).float().mean(0)[0]
    assert liver_x > spleen_x
    assert torch.equal(orient.to_storage(labels), torch.from_numpy(truth.labels))
    assert orient.model_spacing(volume.spacing) == pytest.approx((2.5, 2.5, 3.0))
    assert acquisition_plane(volume.affine) == "axial"


def test_axis_codes_are_validated() -> None:
    assert check_axcodes("las") == "LAS"
    for bad in ("RRS", "RA", "XYZ"):
        with pytest.raises(ValueError):
            check_axcodes(bad)


def test_window_matches_monai_scale_intensity_range() -> None:
    values = torch.linspace(-1500, 1500, 101)
    ours = IntensityWindow(-1000, 400, 0.0, 1.0, clip=True).apply(values.clone())
    theirs = ScaleIntensityRange(-1000, 400, 0.0, 1.0, clip=True)(values.clone())
    assert torch.allclose(ours, torch.as_tensor(theirs), atol=1e-6)


def test_model_grid_keeps_the_field_of_view() -> None:
    assert model_grid_shape((512, 512, 300), (0.8, 0.8, 1.25), (4.0, 4.0, 4.0)) == (102, 102, 94)
    image = preprocess(torch.zeros(10, 20, 30), (4.0, 2.0, 1.0), SPEC)
    assert image.shape == (1, 1, 10, 10, 8)


def test_slab_wise_upsampling_equals_full_trilinear_interpolation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7, 9, 6)
    full = F.interpolate(logits, size=(23, 30, 17), mode="trilinear", align_corners=False)
    ours = logits_to_labels(logits, (23, 30, 17), slab=4)
    assert ours.dtype == torch.uint8
    assert torch.equal(ours.long(), full.argmax(1)[0])


@pytest.mark.parametrize("flip", [False, True])
def test_segment_is_exact_on_the_source_grid(flip: bool) -> None:
    # At the model's own spacing nothing is resampled: the label map must equal the
    # threshold of the source voxels, in storage order, whatever the orientation.
    datasets, _ = make_abdomen_ct(
        n_slices=30,
        rows=64,
        columns=64,
        pixel_spacing_mm=4.0,
        slice_thickness_mm=4.0,
        seed=3,
        flip_left_right=flip,
    )
    volume = assemble_volume(datasets)
    result = segment(
        Threshold(), volume.array, volume.affine, volume.spacing, SPEC, torch.device("cpu")
    )
    assert result.labels.shape == volume.shape
    expected = (volume.array > 0.0).astype(np.uint8)
    assert np.array_equal(result.labels, expected)


def test_segment_resamples_back_onto_a_finer_source_grid() -> None:
    datasets, truth = make_abdomen_ct(
        n_slices=40, rows=96, columns=96, pixel_spacing_mm=2.5, slice_thickness_mm=5.0, seed=4
    )
    volume = assemble_volume(datasets)
    result = segment(
        Threshold(), volume.array, volume.affine, volume.spacing, SPEC, torch.device("cpu")
    )
    assert result.labels.shape == volume.shape
    dense = volume.array > 0.0
    kidneys = truth.labels == KIDNEYS  # ~185 HU, far above the threshold
    assert result.labels[kidneys].mean() > 0.9
    assert (result.labels.astype(bool) == dense).mean() > 0.95


def test_out_of_memory_retries_smaller_batches_then_host_aggregation_then_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str, int]] = []

    def fake_run(network, hu, orient, spacing, spec, device, out_device, sw, options):  # type: ignore[no-untyped-def]
        calls.append((str(device), str(out_device), sw))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return np.zeros(hu.shape, dtype=np.uint8)

    monkeypatch.setattr(engine, "_run_on", fake_run)
    moved: list[str] = []

    def to_device(device: torch.device) -> Threshold:
        moved.append(str(device))
        return Threshold()

    hu = np.zeros((4, 4, 4), dtype=np.float32)
    result = segment(
        Threshold(),
        hu,
        np.diag([1.0, 1.0, 1.0, 1.0]),
        (1.0, 1.0, 1.0),
        SPEC,
        torch.device("cuda:0"),
        ExecutionOptions(sw_batch_size=4),
        to_device=to_device,
    )
    assert calls == [
        ("cuda:0", "cuda:0", 4),
        ("cuda:0", "cuda:0", 2),
        ("cuda:0", "cuda:0", 1),
        ("cuda:0", "cpu", 1),
        ("cpu", "cpu", 4),
    ]
    assert moved == ["cpu"]
    assert result.device == torch.device("cpu")
    assert len(result.attempts) == 5


def test_out_of_memory_without_a_cpu_copy_of_the_network_propagates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(engine, "_run_on", fake_run)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        segment(
            Threshold(),
            np.zeros((4, 4, 4), np.float32),
            np.eye(4),
            (1.0, 1.0, 1.0),
            SPEC,
            torch.device("cuda:0"),
        )


def test_stop_hook_aborts_between_window_batches() -> None:
    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop

    hu = np.zeros((40, 40, 40), dtype=np.float32)
    with pytest.raises(Stop):
        segment(
            Threshold(),
            hu,
            np.eye(4),
            (4.0, 4.0, 4.0),
            SPEC,
            torch.device("cpu"),
            ExecutionOptions(should_stop=stop),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_with_amp_matches_cpu() -> None:
    datasets, _ = make_abdomen_ct(n_slices=40, rows=96, columns=96, pixel_spacing_mm=2.5, seed=6)
    volume = assemble_volume(datasets)
    args = (volume.array, volume.affine, volume.spacing, SPEC)
    cpu = segment(Threshold(), *args, torch.device("cpu"))
    gpu = segment(Threshold().cuda(), *args, torch.device("cuda:0"), ExecutionOptions(amp=True))
    assert gpu.device.type == "cuda"
    assert (cpu.labels == gpu.labels).mean() > 0.999
