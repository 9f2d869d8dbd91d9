"""NodeProcess starts a real ``ainode serve`` on free ports and stops it cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.net import wait_until
from tools.node_process import NodeProcess, NodeStartError, deep_merge

#: The console script beside this interpreter (what `make run` calls).
AINODE = str(Path(sys.executable).with_name("ainode"))


def test_deep_merge_keeps_defaults_and_replaces_lists() -> None:
    base = {"node": {"ae_title": "AINODE", "dicom_port": 1}, "rules": [{"name": "a"}]}
    merged = deep_merge(base, {"node": {"ae_title": "OTHER"}, "rules": []})
    assert merged == {"node": {"ae_title": "OTHER", "dicom_port": 1}, "rules": []}
    assert base["node"]["ae_title"] == "AINODE"  # the base is not modified


def test_version_is_printed() -> None:
    from node import __version__

    for command in ([sys.executable, "-m", "node", "--version"], [AINODE, "--version"]):
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        assert answer.stdout.strip() == f"ainode {__version__}"


@pytest.mark.slow
def test_node_starts_answers_echo_and_stops(tmp_path: Path) -> None:
    node = NodeProcess({"node": {"ae_title": "NODETEST"}}, workdir=tmp_path)
    with node:
        assert node.running()
        assert node.healthz()
        written = yaml.safe_load(node.config_path.read_text())
        assert written["node"]["ae_title"] == "NODETEST"
        assert written["node"]["dicom_port"] == node.dicom_port
        assert written["node"]["data_dir"] == str(tmp_path / "data")
        echo = subprocess.run(
            ["echoscu", "-aec", "NODETEST", "127.0.0.1", str(node.dicom_port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        # Once the routines have loaded, the start-up objects leave the collector's walks.
        frozen = wait_until(
            lambda: re.search(
                r"start-up objects frozen .*objects=(\d+)", node.log_path.read_text()
            ),
            60,
            message="the start-up objects frozen",
        )
        assert int(frozen.group(1)) > 100_000
        pid = node.pid
    assert not node.running()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert node.log_path.read_text()  # the node's output was kept


@pytest.mark.slow
def test_invalid_config_fails_with_log_tail(tmp_path: Path) -> None:
    node = NodeProcess({"node": {"no_such_key": 1}}, workdir=tmp_path, startup_timeout=60)
    try:
        with pytest.raises(NodeStartError, match=r"(?s)exited with status.*no_such_key"):
            node.start()
    finally:
        node.stop()
