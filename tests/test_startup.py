"""Start-up: the listener and API come up without torch; the routines load in the background.

- the modules on the start path, a constructed node and its app, and the CLI commands that
  need no routine import neither torch nor MONAI nor highdicom;
- a real node process answers ``/healthz`` while ``/readyz`` says ``routines loading``
  (``AINODE_DELAY=routines_loading:<s>`` makes the loading slow deterministically); a series
  whose job becomes due meanwhile waits in the queue and is done once they are loaded.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from node.config import BUILT_IN_CHEST_RULE
from tests.support.dcmtk import storescu
from tools.net import wait_until
from tools.node_process import PROJECT_ROOT, NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

HEAVY = ("torch", "monai", "highdicom")

#: Run in a fresh interpreter: import the start path, build the node and its app (as
#: ``ainode serve`` does, before ``start``), run light CLI commands; print what got imported.
PROBE = """
import json, sys
import node.app, node.cli.main, node.api.app, node.dicom.scp
from node.config import BUILT_IN_CHEST_RULE, settings_from_mapping

data_dir, config = sys.argv[1], sys.argv[2]
settings = settings_from_mapping(
    {"node": {"data_dir": data_dir}, "rules": [BUILT_IN_CHEST_RULE]}, environ={}
)
built = node.app.Node(settings, load_routines="background")
node.api.app.create_app(built)
built.db.close()
codes = {}
for argv in (["--help"], ["rules", "list"], ["jobs", "list"], ["destinations", "list"]):
    options = [] if argv == ["--help"] else ["--config", config]
    try:
        codes[" ".join(argv)] = node.cli.main.main(argv + options)
    except SystemExit as exit:
        codes[" ".join(argv)] = exit.code
print(json.dumps({"codes": codes, "heavy": sorted(m for m in %r if m in sys.modules)}))
"""


def test_start_path_and_light_commands_import_no_torch_monai_or_highdicom(
    tmp_path: Path,
) -> None:
    config = tmp_path / "ainode.yaml"
    config.write_text(f"node: {{data_dir: {tmp_path / 'cli-data'}}}\n", "utf-8")
    result = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), str(tmp_path / "data"), str(config)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["codes"] == {
        "--help": 0,
        "rules list": 0,
        "jobs list": 0,
        "destinations list": 0,
    }, result.stderr
    assert report["heavy"] == [], f"imported on the start path: {report['heavy']}"


def _jobs(database: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return [(int(i), str(s)) for i, s in db.execute("SELECT id, state FROM jobs")]


@pytest.mark.serial(reason="must see the node inside its 20 s loading delay")
def test_readyz_says_routines_loading_and_due_jobs_wait_for_them(tmp_path: Path) -> None:
    config = {
        "rules": [BUILT_IN_CHEST_RULE],
        "completion": {"series_quiet_seconds": 0.5, "poll_seconds": 0.2},
    }
    delay = 20  # seconds the loading is held back: longer than sending + completing a series
    with NodeProcess(
        config,
        workdir=tmp_path / "node",
        env={"AINODE_DELAY": f"routines_loading:{delay}"},
        wait_for_routines=False,
    ) as node:
        up = time.monotonic()
        health = httpx.get(f"{node.url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["routines"] == "loading"
        ready = httpx.get(f"{node.url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["problems"] == ["routines loading"]
        assert ready.json()["checks"]["routines_loaded"] is False
        assert ready.json()["checks"]["dicom_listener"] is True

        datasets, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=41)
        storescu(node.dicom_port, write_series(datasets, tmp_path / "ct"), called_ae="AINODE")
        database = node.data_dir / "state.sqlite3"
        wait_until(lambda: _jobs(database), 60, message="a job for the series")
        # Due before the routines are loaded: queued, not failed.
        assert [state for _, state in _jobs(database)] == ["queued"]
        assert time.monotonic() - up < delay, "the test was too slow to see the loading"
        assert httpx.get(f"{node.url}/readyz", timeout=10).status_code == 503

        wait_until(
            lambda: httpx.get(f"{node.url}/readyz", timeout=10).status_code == 200,
            delay + 180,
            message="/readyz 200 once the routines are loaded",
        )
        ready = httpx.get(f"{node.url}/readyz", timeout=10).json()
        assert ready["checks"]["routines_loaded"] is True and "problems" not in ready
        assert "ct_lungs" in httpx.get(f"{node.url}/healthz", timeout=10).json()["plugins"]
        wait_until(lambda: [s for _, s in _jobs(database)] == ["done"], 180, message="the job done")
    log = node.log_path.read_text(errors="replace")
    assert "routines loaded" in log and "delay injected point=routines_loading" in log
