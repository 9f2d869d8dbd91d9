"""Docker files agree with each other and with the development Orthanc configuration."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import settings_from_mapping

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"

#: Keys that legitimately differ between the host dev PACS and the container one.
CONTAINER_ONLY_DIFFERENCES = {
    "StorageDirectory",  # the image's volume /var/lib/orthanc/db
    "IndexDirectory",
    "Plugins",  # the image enables plugins from their configuration sections
    "RemoteAccessAllowed",  # reached through a published port
    "SyncStorageArea",
    "DicomModalities",  # the node's host is the compose service name
    "PythonScript",  # ainode's plugin runs in the container stack (notify style: see orthanc/)
    "PythonVerbose",
    "AiNode",
}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_node_config_is_valid_and_points_at_orthanc_service() -> None:
    settings = settings_from_mapping(
        yaml.safe_load((DOCKER / "ainode.yaml").read_text()), source="ainode.yaml", environ={}
    )
    orthanc = json.loads((DOCKER / "orthanc.json").read_text())
    pacs = settings.destinations["pacs"]
    assert (pacs.host, pacs.ae_title, pacs.port) == (
        "orthanc",
        orthanc["DicomAet"],
        orthanc["DicomPort"],
    )
    assert orthanc["DicomModalities"]["ainode"] == [
        settings.node.ae_title,
        "ainode",
        settings.node.dicom_port,
    ]
    assert settings.node.bind_address == "0.0.0.0"
    assert str(settings.node.data_dir) == "/var/lib/ainode"
    assert all(rule.send_to == ["pacs"] for rule in settings.rules)


def test_compose_services_ports_and_mounts() -> None:
    services = compose()["services"]
    assert set(services) >= {"orthanc", "ainode", "ohif"}
    orthanc_json = json.loads((DOCKER / "orthanc.json").read_text())
    node = yaml.safe_load((DOCKER / "ainode.yaml").read_text())["node"]

    orthanc = services["orthanc"]
    assert orthanc["image"].startswith("orthancteam/orthanc:")
    assert container_ports(orthanc) == {orthanc_json["HttpPort"], orthanc_json["DicomPort"]}
    assert "./orthanc.json:/etc/orthanc/orthanc.json:ro" in orthanc["volumes"]

    ainode = services["ainode"]
    assert (DOCKER / ainode["build"]["context"] / ainode["build"]["dockerfile"]).resolve() == (
        DOCKER / "Dockerfile"
    )
    assert container_ports(ainode) == {node["dicom_port"], node["http_port"]}
    for service in (orthanc, ainode, services["ohif"]):
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), source
        # Development stack without authentication: only on the host's loopback.
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])


def test_dockerfile_matches_config() -> None:
    text = dockerfile()
    node = yaml.safe_load((DOCKER / "ainode.yaml").read_text())["node"]
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {node["dicom_port"], node["http_port"]}
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    mount = next(v for v in compose()["services"]["ainode"]["volumes"] if "ainode.yaml" in v)
    config_path = mount.split(":")[1]
    assert f'CMD ["ainode", "serve", "--config", "{config_path}"]' in text
    assert f"http://127.0.0.1:{node['http_port']}/healthz" in text
    assert 'VOLUME ["/var/lib/ainode"]' in text


def test_build_context_keeps_what_the_package_needs() -> None:
    allowed = {
        line[1:]
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    needed = {
        "pyproject.toml",
        "constraints.txt",
        "node",
        "plugins",
        "dicom_sr_templates",
        "docker/ainode.yaml",
    }
    assert needed <= allowed
    # The image installs with the checkout's exact pins (torch) like the Makefile does.
    assert "pip install -c constraints.txt ." in dockerfile()


def test_orthanc_plugin_wiring_matches_node_config() -> None:
    """The plugin in the stack reaches the node with a token the node accepts."""
    container = json.loads((DOCKER / "orthanc.json").read_text())
    node = settings_from_mapping(
        yaml.safe_load((DOCKER / "ainode.yaml").read_text()), source="ainode.yaml", environ={}
    )
    plugin = container["AiNode"]
    assert plugin["Url"] == f"http://ainode:{node.node.http_port}"
    assert plugin["Token"] in {token.token for token in node.dicomweb.tokens}
    source = node.sources[plugin["Source"]]
    assert source.kind == "dicomweb"
    assert (
        source.url == f"http://orthanc:{container['HttpPort']}{container['DicomWeb']['Root']}"[:-1]
    )
    mount = next(v for v in compose()["services"]["orthanc"]["volumes"] if "plugin" in v)
    assert mount.split(":")[1] == container["PythonScript"]
    assert (DOCKER / mount.split(":")[0]).resolve() == REPO / "orthanc" / "ainode_plugin.py"


def test_gpu_override_reserves_nvidia_devices() -> None:
    override = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    devices = override["services"]["ainode"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_container_orthanc_matches_dev_orthanc() -> None:
    dev = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    container = json.loads((DOCKER / "orthanc.json").read_text())
    for key in sorted((set(dev) | set(container)) - CONTAINER_ONLY_DIFFERENCES):
        assert dev.get(key) == container.get(key), key
    assert container["RemoteAccessAllowed"] is True
    assert container["AuthenticationEnabled"] is False
    dev_node = dev["DicomModalities"]["ainode"]
    container_node = container["DicomModalities"]["ainode"]
    assert (dev_node[0], dev_node[2]) == (container_node[0], container_node[2])


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            str(DOCKER / "compose.yaml"),
            "-f",
            str(DOCKER / "compose.gpu.yaml"),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
