"""ONNX models configured in YAML run through the node like TorchScript ones.

The shipped demonstration network (a MONAI UNet) is exported to ONNX here with
``torch.onnx.export`` and to TorchScript with ``torch.jit.trace``; both are
configured with the same declared spacing, orientation, window and labels and
must give the same label map on a synthetic abdomen CT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from node.config import load_settings
from node.contract.assemble import assemble_volume
from node.contract.plugin import RunContext
from node.contract.volume import Volume
from node.engine.inference import dice
from node.engine.onnx_plugin import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxPlugin,
    execution_providers,
)
from node.orchestration.registry import PluginRegistry
from plugins.ct_organs.model import SPEC, WEIGHTS, build_network
from tests.support.models import ct_organs_model
from tests.support.net import free_port
from tests.support.node import listening_node, send_to_node
from tools.synthetic.abdomen_ct import LABEL_NAMES, make_abdomen_ct
from tools.synthetic.chest_ct import write_series

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same trained network as ONNX and as TorchScript."""
    directory = tmp_path_factory.mktemp("models")
    network = build_network()
    network.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    network.eval()
    example = torch.zeros(1, 1, *SPEC.roi_size)
    onnx_path = directory / "organs.onnx"
    torch.onnx.export(
        network,
        (example,),
        str(onnx_path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    ts_path = directory / "organs.ts"
    torch.jit.save(torch.jit.trace(network, example, check_trace=False), str(ts_path))
    return {"onnx": onnx_path, "torchscript": ts_path}


def _config(tmp_path: Path, models: dict[str, Any], **sections: Any) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"models": models, **sections}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def phantom() -> tuple[list[Any], Volume, np.ndarray]:
    datasets, truth = make_abdomen_ct(
        n_slices=60, rows=128, columns=128, pixel_spacing_mm=3.0, slice_thickness_mm=5.0,
        seed=20_002,
    )  # fmt: skip
    return datasets, assemble_volume(datasets), truth.labels


def test_execution_provider_follows_the_worker_device() -> None:
    both = [CUDA_PROVIDER, CPU_PROVIDER]
    assert execution_providers(torch.device("cuda", 1), both) == [
        (CUDA_PROVIDER, {"device_id": 1}),
        CPU_PROVIDER,
    ]
    assert execution_providers(CPU, both) == [CPU_PROVIDER]
    # onnxruntime without its CUDA build: the CPU, even on a GPU worker.
    assert execution_providers(torch.device("cuda", 0), [CPU_PROVIDER]) == [CPU_PROVIDER]


def test_onnx_and_torchscript_give_the_same_labels(
    tmp_path: Path, exported: dict[str, Path], phantom: tuple[list[Any], Volume, np.ndarray]
) -> None:
    path = _config(
        tmp_path,
        {
            "organs-onnx": ct_organs_model(
                "onnx", exported["onnx"], validated_on={"modalities": ["CT"], "noise": [5, 30]}
            ),
            "organs-ts": ct_organs_model("torchscript", exported["torchscript"]),
        },
    )
    settings = load_settings(path, environ={})
    registry = PluginRegistry()
    registry.configure(settings.models)
    assert not registry.errors
    info = {i.name: i for i in registry.info()}
    assert info["organs-onnx"].source == f"onnx:{exported['onnx']}"
    validated = info["organs-onnx"].validated_on
    assert validated is not None and validated.noise == (5.0, 30.0)
    assert info["organs-ts"].validated_on is None
    _, volume, truth = phantom
    onnx_plugin = registry.get("organs-onnx", CPU)
    assert isinstance(onnx_plugin, OnnxPlugin)
    assert onnx_plugin.network.session.get_providers() == [CPU_PROVIDER]  # type: ignore[union-attr]
    from_onnx = onnx_plugin.run(volume, RunContext(1, "test", CPU))
    from_ts = registry.get("organs-ts", CPU).run(volume, RunContext(2, "test", CPU))
    assert from_onnx.label_map is not None and from_ts.label_map is not None
    assert from_onnx.label_map.shape == volume.shape
    for label in LABEL_NAMES:
        assert dice(from_onnx.label_map, from_ts.label_map, label) > 0.99, LABEL_NAMES[label]
    agreement = float((from_onnx.label_map == from_ts.label_map).mean())
    assert agreement > 0.999
    # And the network is the trained one: the body and lungs are found.
    assert dice(from_onnx.label_map, truth, 1) > 0.9
    assert dice(from_onnx.label_map, truth, 2) > 0.9


def test_a_wrong_onnx_model_is_refused_with_the_reason(
    tmp_path: Path, exported: dict[str, Path]
) -> None:
    path = _config(
        tmp_path,
        {
            "too-few-labels": ct_organs_model(
                "onnx", exported["onnx"], labels=["background", "body"]
            ),
            "no-file": ct_organs_model("onnx", tmp_path / "absent.onnx"),
            "wrong-input": ct_organs_model("onnx", exported["onnx"], input_name="pixels"),
        },
    )
    registry = PluginRegistry()
    registry.configure(load_settings(path, environ={}).models)
    errors = registry.errors
    assert "gives 6 output channels but 2 labels" in errors["too-few-labels"]
    assert "absent.onnx: ONNX file not found" in errors["no-file"]
    assert "input_name 'pixels' is not an input of the model" in errors["wrong-input"]


@pytest.mark.slow  # a real SCP and the worker
def test_an_onnx_model_runs_as_a_node_job(
    tmp_path: Path,
    clock: Any,
    exported: dict[str, Path],
    phantom: tuple[list[Any], Volume, np.ndarray],
) -> None:
    path = _config(
        tmp_path,
        {"organs-onnx": ct_organs_model("onnx", exported["onnx"])},
        node={"dicom_port": free_port(), "data_dir": str(tmp_path / "var")},
        completion={"series_quiet_seconds": 5},
        rules=[{"name": "organs", "match": {"Modality": "CT"}, "plugin": "organs-onnx"}],
    )
    settings = load_settings(path, environ={})
    registry = PluginRegistry()
    registry.configure(settings.models, settings.templates_dir)
    with listening_node(settings, clock, registry, source=str(path)) as node:
        datasets, volume, _ = phantom
        send_to_node(node, write_series(datasets, tmp_path / "in"))
        clock.advance(6)
        assert len(node.completion.poll()) == 1
        assert node.worker.run_once()
        (job,) = node.queue.jobs()
        assert job.state == "done", job.error
        assert job.result_dir is not None
        kinds = sorted(p.name.split("_")[0] for p in job.result_dir.glob("*.dcm"))
        assert kinds == ["seg", "sr"]
        summary = json.loads((job.result_dir / "prediction.json").read_text())
        assert summary["plugin"] == "organs-onnx" and summary["shadow"] is False
        # The same volumes as the plugin run directly.
        direct = registry.get("organs-onnx", CPU).run(volume, RunContext(9, "test", CPU))
        for label, values in direct.measurements.items():
            stored = summary["measurements"][str(label)]["volume_cm3"]
            assert stored == pytest.approx(values["volume_cm3"], rel=1e-6)
