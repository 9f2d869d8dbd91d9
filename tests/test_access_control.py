"""``node.accept``: the calling-AE allow-list and the called-AE check, through a real node."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from node.config import NodeSettings
from node.dicom.scp import access_refusal
from tests.support.dcmtk import storescu
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series


def _settings(**node: object) -> NodeSettings:
    return NodeSettings.model_validate({"ae_title": "AINODE", **node})


def test_invalid_network_is_refused_with_its_key_path() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"accept\.0\.hosts(?s:.*)not an IP address"):
        _settings(accept=[{"ae_title": "CT_ER", "hosts": ["10.1.2.0/33"]}])


def test_access_refusal_rules() -> None:
    open_node = _settings()
    assert access_refusal(open_node, "ANY", "WHATEVER", "192.0.2.1") is None
    node = _settings(
        accept=[{"ae_title": "CT_ER", "hosts": ["10.1.2.0/24", "127.0.0.1"]}, {"ae_title": "MR"}],
        ae_aliases=["AI_ALIAS"],
    )
    assert access_refusal(node, "CT_ER", "AINODE", "10.1.2.77") is None
    assert access_refusal(node, "CT_ER", "AI_ALIAS", "127.0.0.1") is None
    assert access_refusal(node, "MR", "AINODE", "192.0.2.1") is None  # no hosts: any host
    assert access_refusal(node, "CT_ER", "AINODE", "10.1.3.1") == "calling-ae"
    assert access_refusal(node, "CT_X", "AINODE", "10.1.2.77") == "calling-ae"
    assert access_refusal(node, "CT_ER", "OTHER", "10.1.2.77") == "called-ae"


def _echo(port: int, calling: str, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
def test_allow_list_through_real_node(tmp_path: Path) -> None:
    config = {
        "node": {
            "ae_title": "AINODE",
            "ae_aliases": ["AI_ALIAS"],
            "accept": [
                {"ae_title": "CT_ER", "hosts": ["127.0.0.0/8"]},
                {"ae_title": "FAR_CT", "hosts": ["127.0.0.2"]},
            ],
        }
    }
    with NodeProcess(config, workdir=tmp_path) as node:
        port = node.dicom_port
        assert _echo(port, "CT_ER", "AINODE").returncode == 0
        assert _echo(port, "CT_ER", "AI_ALIAS").returncode == 0

        unknown = _echo(port, "INTRUDER", "AINODE")
        assert unknown.returncode != 0
        out = unknown.stdout + unknown.stderr
        assert re.search(r"Rejected Permanent", out, re.I), out
        assert re.search(r"Calling AE Title Not Recognized", out, re.I), out

        wrong_host = _echo(port, "FAR_CT", "AINODE")  # allowed from 127.0.0.2 only
        assert wrong_host.returncode != 0
        out = wrong_host.stdout + wrong_host.stderr
        assert re.search(r"Calling AE Title Not Recognized", out, re.I), out

        wrong_called = _echo(port, "CT_ER", "NOT_ME")
        assert wrong_called.returncode != 0
        out = wrong_called.stdout + wrong_called.stderr
        assert re.search(r"Called AE Title Not Recognized", out, re.I), out

        # An allowed sender still stores, and the node records the alias it called.
        datasets, _ = make_chest_ct(n_slices=3, rows=32, columns=32, seed=5)
        storescu(port, write_series(datasets, tmp_path / "series"), "CT_ER", called_ae="AI_ALIAS")

        with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert (
            'ainode_associations_refused_total{reason="calling_ae_not_recognized"} 2.0' in metrics
        )
        assert 'ainode_associations_refused_total{reason="called_ae_not_recognized"} 1.0' in metrics
    log = node.log_path.read_text()
    assert "association rejected calling_ae=INTRUDER called_ae=AINODE peer=127.0.0.1" in log
    assert "reason=calling-ae-not-recognized" in log
    assert "called_ae=NOT_ME" in log
    assert "called_ae=AI_ALIAS" in log


def test_accept_destinations_allows_each_dimse_destination_from_its_host() -> None:
    from node.config import settings_from_mapping

    settings = settings_from_mapping(
        {
            "node": {"accept": "destinations"},
            "destinations": {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
                "web": {"kind": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web"},
            },
        },
        environ={},
    )
    node = settings.node
    assert node.accept is not None
    assert [(a.ae_title, a.hosts) for a in node.accept] == [("PACS", ["127.0.0.1"])]
    assert access_refusal(node, "PACS", "AINODE", "127.0.0.1") is None
    assert access_refusal(node, "PACS", "AINODE", "10.0.0.1") == "calling-ae"
    assert access_refusal(node, "CT_ER", "AINODE", "127.0.0.1") == "calling-ae"


def test_accept_destinations_with_an_unresolvable_host_is_a_config_error() -> None:
    from node.config import settings_from_mapping
    from node.errors import ConfigError

    with pytest.raises(ConfigError, match=r"destinations\.pacs\.host.*cannot resolve"):
        settings_from_mapping(
            {
                "node": {"accept": "destinations"},
                "destinations": {"pacs": {"ae_title": "P", "host": "no-such.invalid", "port": 1}},
            },
            environ={},
        )
