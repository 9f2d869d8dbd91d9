"""Loading the state dict of a shipped PyTorch model (the demonstration plugins' weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from node.errors import PluginError


def load_state(path: Path) -> dict[str, Any]:
    """The state dict saved at ``path``, on the CPU, tensors only (``weights_only``)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def load_network(
    build_network: Callable[[], torch.nn.Module],
    weights: Path,
    device: torch.device,
    *,
    train_hint: str,
) -> torch.nn.Module:
    """A new network with the weights at ``weights``, on ``device``, in eval mode.

    Raises
    ------
    PluginError
        If the weights file is missing; ``train_hint`` says how to make it.
    """
    if not weights.is_file():
        raise PluginError(f"weights missing: {weights} (run {train_hint})")
    network = build_network()
    network.load_state_dict(load_state(weights))
    return network.to(device).eval()
