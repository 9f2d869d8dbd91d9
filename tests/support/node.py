"""A node in this process, stepped by hand: its DICOM listener runs on a free port, and the
test polls completion and runs the worker itself with a fake clock (no background threads)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node.app import Node
from node.config import Settings, settings_from_mapping
from node.orchestration.registry import PluginRegistry
from tests.support.dcmtk import storescu
from tools.net import free_port
from tools.node_process import deep_merge


def stepped_settings(tmp_path: Path, config: Mapping[str, Any]) -> Settings:
    """``config`` over a node on a free DICOM port with its data under ``tmp_path / "var"``
    and a series complete after 10 quiet seconds."""
    base = {
        "node": {"dicom_port": free_port(), "data_dir": str(tmp_path / "var")},
        "completion": {"series_quiet_seconds": 10},
    }
    return settings_from_mapping(deep_merge(base, config), environ={})


@contextmanager
def listening_node(
    settings: Settings,
    clock: Callable[[], float],
    registry: PluginRegistry | None = None,
    source: str = "<config>",
) -> Iterator[Node]:
    """A :class:`Node` with only its storage SCP started; closed with its database."""
    node = Node(settings, source=source, clock=clock, registry=registry)
    node.scp.start()
    try:
        yield node
    finally:
        node.scp.stop()
        node.db.close()


def send_to_node(node: Node, files: Sequence[Path]) -> None:
    """C-STORE ``files`` to ``node`` with dcmtk's storescu (its default calling AE title)."""
    storescu(node.settings.node.dicom_port, files, calling_ae=None, timeout=60)
