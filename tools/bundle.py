"""Write a small MONAI bundle in the model zoo's layout (tests, benchmarks, examples).

The layout and config keys follow ``spleen_ct_segmentation``::

    <root>/configs/inference.json   network_def, preprocessing, inferer, postprocessing
    <root>/configs/metadata.json    version, network_data_format (channel_def)
    <root>/models/model.pt          state_dict of network_def (or model.ts: TorchScript)

The network is the ``ct_organs`` demonstration UNet, so a bundle written with its
shipped weights segments the synthetic abdomen phantom.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def organs_bundle_config(
    spacing_mm: Sequence[float] = (4.0, 4.0, 4.0),
    roi_size: Sequence[int] = (96, 96, 96),
    sw_batch_size: int = 2,
) -> dict[str, Any]:
    """``configs/inference.json`` of the demonstration UNet, zoo style."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 6,
            "channels": [16, 32, 64, 128],
            "strides": [2, 2, 2],
            "num_res_units": 0,
            "norm": "batch",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "Spacingd",
                    "keys": "image",
                    "pixdim": list(spacing_mm),
                    "mode": "bilinear",
                },
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -1000,
                    "a_max": 400,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(roi_size),
            "sw_batch_size": sw_batch_size,
            "overlap": 0.25,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "meta_key_postfix": "meta_dict",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "resample": False,
                    "squeeze_end_dims": True,
                },
            ],
        },
    }


def organs_bundle_metadata(version: str = "0.1.0") -> dict[str, Any]:
    names = ["background", "body", "lungs", "liver", "spleen", "kidneys"]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": version,
        "monai_version": "1.6.0",
        "name": "Synthetic organs (ainode demonstration)",
        "task": "Demonstration multi-organ segmentation on synthetic CT; not for clinical use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [96, 96, 96],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(names),
                    "spatial_shape": [96, 96, 96],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {str(i): n for i, n in enumerate(names)},
                }
            },
        },
    }


def write_bundle(
    root: Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    torchscript: torch.jit.ScriptModule | None = None,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle directory and return it (weights: ``state_dict`` or ``torchscript``)."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "inference.json").write_text(
        json.dumps(config or organs_bundle_config(), indent=2), encoding="utf-8"
    )
    (root / "configs" / "metadata.json").write_text(
        json.dumps(metadata or organs_bundle_metadata(), indent=2), encoding="utf-8"
    )
    if torchscript is not None:
        torch.jit.save(torchscript, str(root / "models" / "model.ts"))
    elif state_dict is not None:
        torch.save(dict(state_dict), root / "models" / "model.pt")
    return root
