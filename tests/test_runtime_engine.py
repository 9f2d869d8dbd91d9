"""The execution engine: exact reorientation, resampling, slab-wise argmax, OOM plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


def _monai_spacing(values: torch.Tensor, spacing: tuple[float, ...], target: tuple[float, ...]):  # type: ignore[no-untyped-def]
    """MONAI's Spacingd on a ``(C, a, b, c)`` tensor (already RAS) and the data dict."""
    from monai.data import MetaTensor
    from monai.transforms import Spacingd

    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    transform = Spacingd(keys="image", pixdim=target, mode="bilinear")
    return transform, transform({"image": MetaTensor(values.clone(), affine=affine)})


def test_model_grid_and_resampling_are_monai_spacing() -> None:
    # MONAI keeps the first voxel centre: round((n - 1) * s / t) + 1 voxels.
    assert model_grid_shape((512, 512, 300), (0.8, 0.8, 1.25), (4.0, 4.0, 4.0)) == (103, 103, 94)
    image = preprocess(torch.zeros(10, 20, 30), (4.0, 2.0, 1.0), SPEC)
    assert image.shape == (1, 1, 10, 10, 8)
    torch.manual_seed(0)
    values = torch.randn(2, 57, 43, 31)
    spacing, target = (0.8, 0.9, 1.25), (4.0, 3.0, 4.0)
    _, data = _monai_spacing(values, spacing, target)
    theirs = torch.as_tensor(data["image"])
    ours = engine.resample_to_model(values, spacing, target)
    assert ours.shape == theirs.shape == (2, 12, 14, 10)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_window_is_applied_after_resampling_as_monai_does() -> None:
    # 1.5 mm grid on 1 mm voxels: model voxel 1 lies halfway between 2000 HU and -100 HU.
    # Interpolating first gives 950 HU, clipped to the window's top (1.0); windowing first
    # would give (1.0 + 0.643) / 2.
    spec = ModelSpec((1.0, 1.0, 1.5), IntensityWindow(-1000.0, 400.0), ("bg", "x"))
    image = preprocess(torch.tensor([[[-100.0, 2000.0, -100.0]]]), (1.0, 1.0, 1.0), spec)
    assert image.shape == (1, 1, 1, 1, 2)
    assert image.flatten().tolist() == pytest.approx([900.0 / 1400.0, 1.0])


def test_labels_are_monai_softmax_invertd_argmax() -> None:
    from monai.data import MetaTensor
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd

    torch.manual_seed(0)
    source_shape, spacing, target = (23, 30, 17), (1.3, 0.9, 1.7), (4.0, 3.0, 5.0)
    transform, data = _monai_spacing(torch.zeros(1, *source_shape), spacing, target)
    model_shape = model_grid_shape(source_shape, spacing, target)
    logits = torch.randn(1, 5, *model_shape) * 3.0
    data["pred"] = MetaTensor(logits[0].clone(), affine=data["image"].affine)
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False),
        ]
    )
    probabilities = torch.as_tensor(post(data)["pred"])
    ours = engine.resample_to_source(torch.softmax(logits[0], 0), source_shape, spacing, target)
    assert ours.shape == probabilities.shape == (5, *source_shape)
    assert torch.allclose(ours, probabilities, atol=1e-5)
    theirs = torch.as_tensor(AsDiscreted(keys="p", argmax=True)({"p": probabilities})["p"])[0]
    labels = logits_to_labels(logits, source_shape, spacing, target, slab=4)
    assert labels.dtype == torch.uint8 and labels.shape == source_shape
    assert torch.equal(labels.long(), theirs.long())


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
    assert set(result.stages) == {
        "to_device",
        "preprocess",
        "sliding_window",
        "to_source",
        "to_host",
    }
    assert all(seconds >= 0.0 for seconds in result.stages.values())
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
        return np.zeros(hu.shape, dtype=np.uint8), {"sliding_window": 0.0}

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
    assert result.stages == {"sliding_window": 0.0}  # the stages of the plan that ran


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
    assert gpu.labels.shape == cpu.labels.shape and gpu.labels.dtype == np.uint8
    assert (cpu.labels == gpu.labels).mean() > 0.999
    stages = {"to_device", "preprocess", "sliding_window", "to_source", "to_host"}
    assert set(gpu.stages) == stages


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_out_of_memory_falls_back_to_the_cpu_with_the_same_labels() -> None:
    # A per-process cap far below the volume makes the CUDA caching allocator raise a
    # genuine OutOfMemoryError in every GPU plan; the CPU plan must give the CPU's labels.
    datasets, _ = make_abdomen_ct(n_slices=40, rows=96, columns=96, pixel_spacing_mm=2.5, seed=6)
    volume = assemble_volume(datasets)
    args = (volume.array, volume.affine, volume.spacing, SPEC)
    cpu = segment(Threshold(), *args, torch.device("cpu"))
    gpu = torch.device("cuda:0")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1e-6, gpu)
    try:
        result = segment(
            Threshold().to(gpu),
            *args,
            gpu,
            ExecutionOptions(sw_batch_size=2),
            to_device=lambda device: Threshold().to(device),
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, gpu)
        torch.cuda.empty_cache()
    assert result.attempts == (
        "cuda:0/cuda:0/sw2",
        "cuda:0/cuda:0/sw1",
        "cuda:0/cpu/sw1",
        "cpu/cpu/sw2",
    )
    assert result.device == torch.device("cpu")
    assert np.array_equal(result.labels, cpu.labels)
