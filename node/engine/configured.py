"""Generic model plugins created from configuration: MONAI bundles here, and the factory
(:func:`configured_plugin`) for every ``models:`` entry (TorchScript, bundle, ONNX).

Both are named instances of a plugin class; the name is what rules reference.
Output label names are mapped to the template's label values here, when the
node starts, so a model whose labels its template cannot code never runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.config import (
    BundleModelSettings,
    OnnxModelSettings,
    TorchScriptModelSettings,
)
from node.contract.plugin import (
    Factory,
    InferencePlugin,
    PluginInfo,
    Prediction,
    RunContext,
)
from node.contract.template import load_template_by_name
from node.contract.volume import Volume
from node.engine.declared import accepts_from, resolve_label_values, resources_from
from node.engine.inference import run_with_fallback
from node.engine.model_plugin import (
    DeviceModelPlugin,
    label_measurements,
)
from node.engine.network_plugin import TorchScriptPlugin
from node.errors import PluginError

log = logging.getLogger(__name__)

#: Bundle transforms the node replaces: it hands the image over in memory and keeps the output.
_SKIPPED_TRANSFORMS = frozenset(
    {
        "LoadImage",
        "LoadImaged",
        "EnsureChannelFirst",
        "EnsureChannelFirstd",
        "SaveImage",
        "SaveImaged",
    }
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class BundleError(PluginError):
    """A MONAI bundle directory is incomplete or inconsistent."""


def _bundle_config_path(root: Path, config: str | None) -> Path:
    configs = root / "configs"
    candidates = [config] if config else ["inference.json", "inference.yaml", "inference.yml"]
    for candidate in candidates:
        if candidate and (configs / candidate).is_file():
            return configs / candidate
    raise BundleError(f"{configs}: no {' or '.join(c for c in candidates if c)}")


def _bundle_weights(root: Path) -> Path:
    for name in ("model.ts", "model.pt"):
        if (root / "models" / name).is_file():
            return root / "models" / name
    raise BundleError(f"{root / 'models'}: no model.ts or model.pt")


def bundle_metadata(root: Path) -> dict[str, Any]:
    path = root / "configs" / "metadata.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read bundle metadata: {exc}") from exc
    return data


def bundle_labels(metadata: dict[str, Any]) -> tuple[str, list[str]]:
    """The output key and its channel names from ``network_data_format``."""
    try:
        outputs = metadata["network_data_format"]["outputs"]
        key = next(iter(outputs))
        channel_def = outputs[key]["channel_def"]
        names = [str(channel_def[str(i)]) for i in range(len(channel_def))]
    except (KeyError, StopIteration, TypeError) as exc:
        raise BundleError(
            f"metadata.json: network_data_format.outputs has no channel_def ({exc})"
        ) from exc
    return key, names


class MonaiBundlePlugin(DeviceModelPlugin[dict[str, Any]]):
    """Runs a MONAI bundle: its network, pre/post-processing and inferer, on the node's device.

    The node builds the image (a ``MetaTensor`` in RAS world coordinates with the
    series' affine, as ``LoadImaged`` would) and drops the bundle's loader and
    writer transforms. After the bundle's postprocessing the label map must lie on
    the input grid (bundles invert their spatial transforms with ``Invertd``);
    otherwise it is resampled onto it (nearest neighbour).
    """

    def __init__(
        self, name: str, settings: BundleModelSettings, templates_dir: Path | None
    ) -> None:
        super().__init__()
        self.name = name
        self.root = settings.path
        self.settings = settings
        self.template = settings.template
        self.accepts = accepts_from(settings.accepts)
        self.resources = resources_from(settings.resources)
        self.config_path = _bundle_config_path(self.root, settings.config)
        self.weights = _bundle_weights(self.root)
        self.metadata = bundle_metadata(self.root)
        self.version = str(self.metadata.get("version", "unknown"))
        self.output_key, self.label_names = bundle_labels(self.metadata)
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {"image": {}})
        self.input_key = next(iter(inputs), "image")
        template = load_template_by_name(settings.template, templates_dir)
        self.label_values = resolve_label_values(self.label_names, template, settings.label_values)

    def _parse(self, device: torch.device) -> dict[str, Any]:
        from monai.bundle import ConfigParser
        from monai.transforms import Compose

        parser = ConfigParser()
        parser.read_config(str(self.config_path))
        parser.read_meta(str(self.root / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.root)
        parser["device"] = f"$torch.device('{device}')"
        for key in ("preprocessing", "postprocessing"):
            # Drop loaders and writers before anything is instantiated.
            transforms = parser[f"{key}#transforms"]
            parser[f"{key}#transforms"] = [
                t
                for t in transforms
                if not (
                    isinstance(t, dict)
                    and str(t.get("_target_", "")).rsplit(".", 1)[-1] in _SKIPPED_TRANSFORMS
                )
            ]
        if self.weights.suffix == ".ts":
            network = torch.jit.load(str(self.weights), map_location=device)
        else:
            network = parser.get_parsed_content("network_def").to(device)
            state = torch.load(self.weights, map_location=device, weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            network.load_state_dict(state)
        network.eval()
        pre = parser.get_parsed_content("preprocessing")
        post = parser.get_parsed_content("postprocessing")
        inferer = parser.get_parsed_content("inferer")
        if self.settings.sw_batch_size is not None and hasattr(inferer, "sw_batch_size"):
            inferer.sw_batch_size = self.settings.sw_batch_size
        if hasattr(inferer, "sw_device"):
            inferer.sw_device = device
            inferer.device = device
        assert isinstance(pre, Compose) and isinstance(post, Compose)
        return {
            "network": network,
            "pre": pre,
            "post": post,
            "inferer": inferer,
            # The first plan's window batch (a fallback leaves the inferer's smaller).
            "sw_batch_size": int(getattr(inferer, "sw_batch_size", 1)),
        }

    def _place(self, device: torch.device) -> dict[str, Any]:
        return self._parse(device)

    def _log_loaded(self, device: torch.device, seconds: float) -> None:
        log.info(
            "bundle loaded name=%s version=%s device=%s seconds=%.2f",
            self.name,
            self.version,
            device,
            seconds,
        )

    def _image(self, volume: Volume, device: torch.device) -> Any:
        from monai.data import MetaTensor

        # (slice, row, column) → (column, row, slice): the affine's index order.
        pixels = torch.from_numpy(volume.array).permute(2, 1, 0)[None].to(device)
        affine = torch.as_tensor(_LPS_TO_RAS @ volume.affine, dtype=torch.float64)
        meta = {
            "filename_or_obj": volume.series_instance_uid,
            "original_affine": affine.clone(),
            "spatial_shape": np.asarray(pixels.shape[1:]),
            "original_channel_dim": "no_channel",
            "space": "RAS",
        }
        return MetaTensor(pixels, affine=affine, meta=meta)

    def _infer(
        self,
        parts: dict[str, Any],
        image: Any,
        device: torch.device,
        out_device: torch.device | None = None,
        sw_batch_size: int | None = None,
    ) -> Any:
        """The bundle's inferer on ``image``: windows on ``device``, aggregated on
        ``out_device`` (a sliding-window inferer's ``sw_device`` and ``device``)."""
        from monai.data import MetaTensor

        inferer = parts["inferer"]
        if hasattr(inferer, "sw_device"):
            inferer.sw_device = device
            inferer.device = out_device or device
        if sw_batch_size is not None and hasattr(inferer, "sw_batch_size"):
            inferer.sw_batch_size = sw_batch_size
        batch = image[None].to(device)
        use_amp = self.settings.amp and device.type == "cuda"
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp),
        ):
            logits = inferer(batch, parts["network"])
        logits = torch.as_tensor(logits).float()[0]
        return MetaTensor(logits, meta=dict(image.meta))

    def _infer_with_fallback(self, parts: dict[str, Any], image: Any, device: torch.device) -> Any:
        """:meth:`_infer` under the engine's out-of-memory policy (:func:`run_with_fallback`):
        smaller window batches, then aggregation on the host, then the CPU."""
        batch = int(parts.get("sw_batch_size", 1))
        on_device = {device: parts}

        def attempt(run_device: torch.device, out_device: torch.device, sw_batch: int) -> Any:
            if run_device not in on_device:
                log.warning("CUDA out of memory: bundle runs on %s name=%s", run_device, self.name)
                on_device[run_device] = self._parse(run_device)
            return self._infer(on_device[run_device], image, run_device, out_device, sw_batch)

        logits, plan, attempts = run_with_fallback(device, batch, attempt)
        if len(attempts) > 1:
            log.info("bundle ran name=%s plan=%s tried=%s", self.name, plan, ",".join(attempts))
        return logits

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        parts = self._loaded()
        started = time.perf_counter()
        device = context.device
        source = self._image(volume, device)
        with torch.inference_mode():
            data = parts["pre"]({self.input_key: source})
        context.raise_if_expired()
        image = data[self.input_key]
        data[self.output_key] = logits = self._infer_with_fallback(parts, image, device)
        if logits.device != image.device:  # it fell back to the CPU: postprocess there
            data[self.input_key] = image.to(logits.device)
        context.raise_if_expired()
        with torch.inference_mode():
            data = parts["post"](data)
        labels = self._on_source_grid(data[self.output_key], source)
        table = np.zeros(len(self.label_names), dtype=np.uint16)
        for channel, value in self.label_values.items():
            table[channel] = value
        dtype = np.uint8 if table.max() <= 255 else np.uint16
        label_map = np.ascontiguousarray(table.astype(dtype)[labels.transpose(2, 1, 0)])
        measurements = label_measurements(
            self.name, volume, label_map, sorted(set(self.label_values.values()))
        )
        log.info(
            "bundle segmented name=%s job=%d series=%s device=%s seconds=%.2f",
            self.name,
            context.job_id,
            volume.series_instance_uid,
            device,
            time.perf_counter() - started,
        )
        return Prediction(label_map=label_map, measurements=measurements)

    @staticmethod
    def _on_source_grid(prediction: Any, source: Any) -> np.ndarray:
        """Integer labels ``(column, row, slice)`` exactly on the source grid."""
        from monai.data import MetaTensor
        from monai.transforms import ResampleToMatch

        pred = prediction if isinstance(prediction, torch.Tensor) else torch.as_tensor(prediction)
        if pred.ndim == 4 and pred.shape[0] > 1:  # probabilities or logits without argmax
            pred = pred.argmax(0, keepdim=True)
        same_grid = tuple(pred.shape[1:]) == tuple(source.shape[1:])
        if same_grid and isinstance(pred, MetaTensor):
            same_grid = torch.allclose(
                pred.affine.double().cpu(), source.affine.double().cpu(), atol=1e-3
            )
        if not same_grid:
            if not isinstance(pred, MetaTensor):
                raise PluginError("bundle output is not on the input grid and has no affine")
            pred = ResampleToMatch(mode="nearest")(pred.float(), img_dst=source.float())
        return np.rint(torch.as_tensor(pred)[0].cpu().numpy()).astype(np.int64)


def configured_plugin(
    name: str, settings: Any, templates_dir: Path | None
) -> tuple[PluginInfo, Factory]:
    """Check a ``models:`` entry and return its :class:`PluginInfo` and a factory."""
    factory: Callable[[], InferencePlugin]
    if isinstance(settings, TorchScriptModelSettings):
        if not settings.path.is_file():
            raise PluginError(f"{settings.path}: TorchScript file not found")
        template = load_template_by_name(settings.template, templates_dir)
        values = resolve_label_values(settings.labels, template, settings.label_values)
        prototype: InferencePlugin = TorchScriptPlugin(name, settings, values)

        def factory() -> InferencePlugin:
            return TorchScriptPlugin(name, settings, values)

    elif isinstance(settings, BundleModelSettings):
        prototype = MonaiBundlePlugin(name, settings, templates_dir)

        def factory() -> InferencePlugin:
            return MonaiBundlePlugin(name, settings, templates_dir)

    elif isinstance(settings, OnnxModelSettings):
        from node.engine.onnx_plugin import OnnxPlugin, check_model

        io_names = check_model(settings)
        template = load_template_by_name(settings.template, templates_dir)
        onnx_values = resolve_label_values(settings.labels, template, settings.label_values)
        prototype = OnnxPlugin(name, settings, onnx_values, io_names)

        def factory() -> InferencePlugin:
            return OnnxPlugin(name, settings, onnx_values, io_names)

    else:
        raise PluginError(f"unknown model type {type(settings).__name__}")
    source = f"{settings.type}:{settings.path}"
    info = PluginInfo(
        name,
        prototype.version,
        prototype.template,
        source,
        prototype.accepts,
        prototype.resources,
        prototype.validated_on,
    )
    return info, factory
