"""Inference benchmark: the node's pipeline against a plain MONAI reference, same model.

One synthetic 512x512x300 abdomen CT (0.8 mm pixels, 1.25 mm slices) is written as
DICOM files; then, in the same process and alternating order:

* **node**: ``load_volume`` (the node's DICOM reader and geometry checks) → the
  ``ct_organs`` plugin's engine: reorientation, window and resampling on the device,
  ``sliding_window_inference``, slab-wise trilinear upsampling of the logits and argmax
  → ``uint8`` label map on the source grid;
* **reference**: what a MONAI tutorial / the zoo's ``spleen_ct_segmentation`` does with
  the same network, weights, windows (roi, overlap, batch, gaussian blending):
  ``LoadImaged(PydicomReader)`` → ``EnsureChannelFirstd`` → ``Orientationd(RAS)`` →
  ``Spacingd`` → ``ScaleIntensityRanged`` → ``sliding_window_inference`` →
  ``Activationsd(softmax)`` → ``Invertd`` → ``AsDiscreted(argmax)``.

Both end with a label map on the source grid; their agreement (Dice per label) is
reported so a fast but different result would show. Measures only; asserts nothing.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _clock(device: torch.device) -> float:
    """``perf_counter`` after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _node(paths: list[Path], device: torch.device) -> tuple[np.ndarray, dict[str, Any]]:
    from node.contract.assemble import load_volume
    from node.contract.plugin import RunContext
    from plugins.ct_organs import CtOrgansPlugin

    plugin = CtOrgansPlugin()
    plugin.load(device)
    started = _clock(device)
    volume = load_volume(paths)
    loaded = _clock(device)
    prediction = plugin.run(volume, RunContext(0, "benchmark", device))
    done = _clock(device)
    assert prediction.label_map is not None
    return prediction.label_map, {
        "load_s": loaded - started,
        "infer_s": done - loaded,
        "total_s": done - started,
        # the engine's stages (synchronized on CUDA), then clean-up and measurements
        "stages_s": {"load": loaded - started, **plugin.last_stages},
    }


def _reference(directory: Path, device: torch.device) -> tuple[np.ndarray, dict[str, Any]]:
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    from plugins.ct_organs.model import SPEC, WEIGHTS, build_network

    network = build_network()
    network.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    network = network.to(device).eval()
    window = SPEC.window
    load = Compose(
        [
            LoadImaged(keys="image", reader="PydicomReader"),
            EnsureChannelFirstd(keys="image"),
        ]
    )
    pre = Compose(
        [
            Orientationd(keys="image", axcodes=SPEC.axcodes),
            Spacingd(keys="image", pixdim=SPEC.spacing_mm, mode="bilinear"),
            ScaleIntensityRanged(
                keys="image",
                a_min=window.a_min,
                a_max=window.a_max,
                b_min=window.b_min,
                b_max=window.b_max,
                clip=window.clip,
            ),
            EnsureTyped(keys="image", device=device),
        ]
    )
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", argmax=True),
        ]
    )
    started = _clock(device)
    data = load({"image": str(directory)})
    read = _clock(device)
    data = pre(data)
    loaded = _clock(device)
    with torch.inference_mode():
        data["pred"] = sliding_window_inference(
            data["image"][None],
            roi_size=SPEC.roi_size,
            sw_batch_size=SPEC.sw_batch_size,
            predictor=network,
            overlap=SPEC.overlap,
            mode=SPEC.blend,
        )[0]
        windows = _clock(device)
        data = post(data)
    pred = data["pred"]
    done = _clock(device)
    # Reference output is (x, y, z) in the loader's order; bring it to the node's
    # storage order (slice, row, column) through the affines for the comparison.
    labels = np.asarray(pred[0].cpu().numpy(), dtype=np.uint8)
    affine = np.asarray(pred.affine)
    labels = labels.transpose(2, 1, 0)
    if affine[2, 2] < 0:  # the reader stacked slices from the top
        labels = labels[::-1]
    return np.ascontiguousarray(labels), {
        "load_s": loaded - started,  # read + all preprocessing
        "infer_s": done - loaded,
        "total_s": done - started,
        "stages_s": {
            "load": read - started,
            "preprocess": loaded - read,
            "sliding_window": windows - loaded,
            "to_source": done - windows,  # softmax, Invertd, argmax
        },
    }


def run_inference(
    workdir: Path,
    *,
    slices: int = 300,
    rows: int = 512,
    repeat: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    from node.engine.inference import dice
    from tools.synthetic.abdomen_ct import LABEL_NAMES, make_abdomen_ct
    from tools.synthetic.chest_ct import write_series

    target = torch.device(device)
    started = time.perf_counter()
    datasets, truth = make_abdomen_ct(
        n_slices=slices,
        rows=rows,
        columns=rows,
        pixel_spacing_mm=round(410.0 / rows, 3),
        slice_thickness_mm=round(375.0 / slices, 3),
        seed=4242,
    )
    series_dir = workdir / "series"
    paths = write_series(datasets, series_dir)
    del datasets
    generated = time.perf_counter() - started
    runs: list[dict[str, Any]] = []
    node_labels = reference_labels = None
    for index in range(repeat):
        order = ("node", "reference") if index % 2 == 0 else ("reference", "node")
        run: dict[str, Any] = {}
        for name in order:
            gc.collect()
            if target.type == "cuda":
                torch.cuda.empty_cache()
            if name == "node":
                node_labels, run["node"] = _node(paths, target)
            else:
                reference_labels, run["reference"] = _reference(series_dir, target)
        run["ratio_node_over_reference"] = run["node"]["total_s"] / run["reference"]["total_s"]
        run["speedup"] = run["reference"]["total_s"] / run["node"]["total_s"]
        runs.append(run)
    assert node_labels is not None and reference_labels is not None
    agreement = {
        LABEL_NAMES[label]: round(dice(node_labels, reference_labels, label), 4)
        for label in LABEL_NAMES
    }
    # The routine also removes stray components (one liver, two kidneys, ...); the same
    # clean-up on the reference's labels isolates what the engines themselves differ in.
    from plugins.ct_organs import CtOrgansPlugin

    cleaned = CtOrgansPlugin().postprocess(reference_labels)
    agreement_engine = {
        LABEL_NAMES[label]: round(dice(node_labels, cleaned, label), 4) for label in LABEL_NAMES
    }
    truth_dice = {
        "node": {
            LABEL_NAMES[label]: round(dice(node_labels, truth.labels, label), 4)
            for label in LABEL_NAMES
        },
        "reference": {
            LABEL_NAMES[label]: round(dice(reference_labels, truth.labels, label), 4)
            for label in LABEL_NAMES
        },
    }
    return {
        "shape": [slices, rows, rows],
        "device": str(target),
        "device_name": torch.cuda.get_device_name(target) if target.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "phantom_generation_s": round(generated, 1),
        "runs": runs,
        "agreement_dice": agreement,
        "agreement_dice_engine": agreement_engine,
        "truth_dice": truth_dice,
    }


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def median_stages(result: dict[str, Any], name: str) -> dict[str, float]:
    """Median seconds per stage of pipeline ``name`` over the runs."""
    stages: dict[str, list[float]] = {}
    for run in result["runs"]:
        for stage, seconds in run[name].get("stages_s", {}).items():
            stages.setdefault(stage, []).append(seconds)
    return {stage: _median(values) for stage, values in stages.items()}


def inference_table(result: dict[str, Any]) -> list[str]:
    s, r, c = result["shape"]
    lines = [
        f"Inference: ct_organs on a {c}x{r}x{s} CT, device {result['device']}"
        + (f" ({result['device_name']})" if result.get("device_name") else "")
        + f", {result['threads']} torch threads",
        f"  {'run':<4} {'pipeline':<10} {'load+pre':>9} {'infer+post':>10} {'total':>8}  (seconds)",
    ]
    for index, run in enumerate(result["runs"]):
        for name in ("node", "reference"):
            entry = run[name]
            lines.append(
                f"  {index:<4} {name:<10} {entry['load_s']:>9.2f} {entry['infer_s']:>10.2f} "
                f"{entry['total_s']:>8.2f}"
            )
        lines.append(
            f"  {index:<4} node / reference time: {run['ratio_node_over_reference']:.3f} "
            f"(node {run['reference']['total_s'] / run['node']['total_s']:.2f}x as fast)"
        )
    for name in ("node", "reference"):
        stages = median_stages(result, name)
        lines.append(
            f"  {name} stages (median s): "
            + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in stages.items())
        )
    lines.append(
        "  node vs reference Dice: "
        + ", ".join(f"{k} {v:.4f}" for k, v in result["agreement_dice"].items())
    )
    if "agreement_dice_engine" in result:
        lines.append(
            "  node vs reference + the routine's clean-up, Dice: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["agreement_dice_engine"].items())
        )
    for name in ("node", "reference"):
        lines.append(
            f"  {name} vs phantom truth Dice: "
            + ", ".join(f"{k} {v:.3f}" for k, v in result["truth_dice"][name].items())
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked per-stage seconds (medians) of node and reference, speed-up and agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("node", "reference")
    medians = {name: median_stages(result, name) for name in names}
    stages: list[str] = []
    for name in names:
        stages.extend(stage for stage in medians[name] if stage not in stages)
    figure, (bars, agreement) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.get_cmap("tab10")
    for index, stage in enumerate(stages):
        bottoms = [sum(medians[n].get(st, 0.0) for st in stages[:index]) for n in names]
        heights = [medians[n].get(stage, 0.0) for n in names]
        bars.bar(names, heights, bottom=bottoms, label=stage, color=colours(index % 10))
    speedups = [run["reference"]["total_s"] / run["node"]["total_s"] for run in result["runs"]]
    s, r, c = result["shape"]
    bars.set_ylabel("seconds (median of runs)")
    bars.set_title(
        f"ct_organs {c}x{r}x{s} on {result['device']}: node {_median(speedups):.2f}x as fast"
    )
    bars.legend(fontsize=8)
    labels = list(result["agreement_dice"])
    x = np.arange(len(labels))
    agreement.bar(x - 0.2, [result["agreement_dice"][k] for k in labels], 0.4, label="reference")
    if "agreement_dice_engine" in result:
        engine = [result["agreement_dice_engine"][k] for k in labels]
        agreement.bar(x + 0.2, engine, 0.4, label="reference + routine clean-up")
    agreement.axhline(0.99, color="grey", linestyle="--", linewidth=1)
    agreement.set_xticks(x, labels)
    agreement.set_ylim(0.9, 1.0)
    agreement.set_title("Dice, node vs plain MONAI labels")
    agreement.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
