"""``make demo`` end to end: the repository's Orthanc config, the node, SEG + SR back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import demo
from tools.net import free_ports, http_ok

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    settings["HttpPort"], settings["DicomPort"] = free_ports(2)
    config = tmp_path / "orthanc" / "orthanc.json"
    config.parent.mkdir()
    config.write_text(json.dumps(settings))

    status = demo.main(
        [
            "--exit",
            "--orthanc-config",
            str(config),
            "--work-dir",
            str(tmp_path / "demo"),
            "--dicom-port",
            "0",
            "--http-port",
            "0",
            "--slices",
            "40",
            "--quiet-seconds",
            "1",
            "--timeout",
            "300",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    base = f"http://127.0.0.1:{settings['HttpPort']}/app/explorer.html"
    assert f"Source study  {base}#study?uuid=" in out
    assert f"SEG series    {base}#series?uuid=" in out
    assert f"SR series     {base}#series?uuid=" in out
    assert "send + results (end to end)" in out
    volumes = [line.split() for line in out.splitlines() if "Volume" in line]
    assert [v[0] for v in volumes] == ["right-lung", "left-lung"]
    assert all(v[-1] == "cm3" and float(v[-2]) > 0 for v in volumes)
    # The demo stopped the Orthanc it started; its storage stays next to the config.
    assert not http_ok(f"http://127.0.0.1:{settings['HttpPort']}/system")
    assert (tmp_path / "var" / "orthanc").is_dir()
