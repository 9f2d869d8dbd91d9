"""``ainode check-config`` reports every problem of a file in one run (issue 17)."""

import json
import subprocess
import sys
from pathlib import Path

BROKEN = """
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest-ct
    match: {Modality: CT, SeriesDescription: {regex: "(?i)chest|thorax|lung"}}
    plugin: ct_lungs
    send_to: [pacs2]
  - name: typo
    match: {Modality: CT}
    plugin: ct_lungz
    send_to: [pacs]
  - name: bad-regex
    match: {Modality: CT, SeriesDescription: {regex: "(unclosed"}}
    plugin: ct_lungs
"""


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_all_problems_reported_in_one_run(tmp_path):
    path = tmp_path / "ainode.yaml"
    path.write_text(BROKEN)
    result = check_config(str(path))
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "3 problem(s)" in err
    assert "rules[0].send_to: unknown destination 'pacs2'" in err
    assert "rules[1].plugin: unknown plugin 'ct_lungz'" in err
    assert "rules[2].match: " in err and "regex: invalid regular expression" in err

    as_json = check_config("--json", str(path))
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["valid"] is False
    paths = sorted(p["path"] for p in report["problems"])
    assert paths == ["rules[0].send_to", "rules[1].plugin", "rules[2].match"]


def test_valid_file_exits_zero(tmp_path):
    path = tmp_path / "ainode.yaml"
    path.write_text(BROKEN.split("  - name: typo")[0].replace("pacs2", "pacs"))
    result = check_config(str(path))
    assert result.returncode == 0, result.stderr
    assert "valid (1 rules, 1 destinations)" in result.stdout
    report = json.loads(check_config("--json", str(path)).stdout)
    assert report == {"file": str(path), "valid": True, "problems": []}


def test_unreadable_file_is_a_problem(tmp_path):
    result = check_config("--json", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "cannot read configuration" in json.loads(result.stdout)["problems"][0]["message"]
