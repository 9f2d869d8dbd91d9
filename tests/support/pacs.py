"""A real Orthanc and a node wired to each other, the set-up of the end-to-end tests.

Orthanc knows the node as modality ``ainode`` (so a test can C-MOVE a study to it) and the
node sends its results to Orthanc as destination ``pacs``; every rule given sends there.

Examples
--------
::

    with orthanc_and_node_process(tmp_path, [rule], results=["seg", "sr"]) as (pacs, node):
        upload_many(pacs.client, files)
        send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])
        objects = one_result_each(pacs, study_uid, ["SEG", "SR"])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.app import Node
from node.config import settings_from_mapping
from node.contract.plugin import InferencePlugin
from node.orchestration.registry import PluginRegistry
from tools.net import LOCALHOST, free_port
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import (
    instance_dataset,
    wait_for_series,
)


@contextmanager
def orthanc_for_node(tmp_path: Path) -> Iterator[tuple[OrthancServer, int]]:
    """Orthanc under ``tmp_path / "orthanc"`` with modality ``ainode`` (AE ``AINODE``) on a
    free port; yields it and that port, for the node to listen on."""
    node_port = free_port()
    with OrthancServer(
        modalities={"ainode": ["AINODE", LOCALHOST, node_port]}, workdir=tmp_path / "orthanc"
    ) as pacs:
        yield pacs, node_port


def node_config(
    node_port: int,
    pacs: OrthancServer,
    rules: Iterable[Mapping[str, Any]],
    *,
    results: Sequence[str] | None = None,
    quiet_seconds: float = 1.5,
) -> dict[str, Any]:
    """A node on ``node_port`` whose ``rules`` all send to ``pacs`` (destination ``pacs``,
    with its result profile ``results`` or the default one)."""
    destination: dict[str, Any] = {"ae_title": pacs.aet, "host": LOCALHOST, "port": pacs.dicom_port}
    if results is not None:
        destination["results"] = list(results)
    return {
        "node": {"dicom_port": node_port},
        "completion": {"series_quiet_seconds": quiet_seconds, "poll_seconds": 0.25},
        "destinations": {"pacs": destination},
        "rules": [{**rule, "send_to": ["pacs"]} for rule in rules],
    }


def one_result_each(
    pacs: OrthancServer, study_uid: str, modalities: Sequence[str], timeout: float = 300
) -> dict[str, Dataset]:
    """Wait for ``modalities`` in the study; each must be one series of one instance: those
    instances by modality."""
    found = wait_for_series(pacs.client, study_uid, modalities, timeout=timeout)
    objects = {}
    for modality, series in found.items():
        (one_series,) = series
        (instance,) = one_series["Instances"]
        objects[modality] = instance_dataset(pacs.client, instance)
    return objects


@contextmanager
def orthanc_and_node_process(
    tmp_path: Path,
    rules: Iterable[Mapping[str, Any]],
    *,
    results: Sequence[str] | None = None,
    node: Mapping[str, Any] | None = None,
) -> Iterator[tuple[OrthancServer, NodeProcess]]:
    """Orthanc and the node as a real process (``python -m node``) under ``tmp_path``;
    ``node``: more of the config's ``node`` section."""
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, rules, results=results)
        config["node"].update(node or {})
        with NodeProcess(config, workdir=tmp_path / "node") as process:
            yield pacs, process


@contextmanager
def orthanc_and_node(
    tmp_path: Path,
    rules: Iterable[Mapping[str, Any]],
    *,
    plugins: Iterable[type[InferencePlugin]],
    templates_dir: Path,
    results: Sequence[str] | None = None,
    quiet_seconds: float = 1.5,
) -> Iterator[tuple[OrthancServer, Node]]:
    """Orthanc and a started :class:`Node` in this process that runs only ``plugins`` (test
    routines), with its data under ``tmp_path / "var"``."""
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, rules, results=results, quiet_seconds=quiet_seconds)
        config["node"]["data_dir"] = str(tmp_path / "var")
        config["templates_dir"] = str(templates_dir)
        registry = PluginRegistry()
        for plugin in plugins:
            registry.register(plugin)
        node = Node(settings_from_mapping(config, environ={}), registry=registry)
        node.start()
        try:
            yield pacs, node
        finally:
            node.stop()
