"""The node with ``executor.kind: ray`` on a real Ray cluster of separate processes.

A head and two worker processes (``ray start``; each worker has one CPU and one unit of
the custom resource ``ainode_gpu`` standing in for a GPU) run the ``ct_lungs`` actors;
the node (a real process) drives them, Orthanc receives the results. The same round
trip as the local executor's end-to-end test passes; and when the worker holding a
running job is SIGKILLed, the job goes back to the queue, runs on the other worker, and
Orthanc holds exactly one SEG and one SR.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import BUILT_IN_CHEST_RULE
from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
from tests.support.ray_cluster import RayCluster
from tests.test_e2e import assert_results_match
from tools.node_process import NodeProcess
from tools.orthanc_rest import find_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

#: Each run holds still this long before the routine runs (time to kill its worker).
DELAY_SECONDS = 6


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with RayCluster(
        workers=2,
        resources={"ainode_gpu": 1},
        env={"AINODE_DELAY": f"inference_running:{DELAY_SECONDS}"},
    ) as running:
        yield running


def ray_node(tmp_path: Path, cluster: RayCluster, node_port: int, pacs) -> NodeProcess:
    config = node_config(node_port, pacs, [BUILT_IN_CHEST_RULE])
    config["executor"] = {
        "kind": "ray",
        "address": cluster.address,
        "namespace": f"ainode-{tmp_path.name}",
        "gpu_resource": "ainode_gpu",
        "max_in_flight_per_actor": 1,
    }
    keep = ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")
    return NodeProcess(config, workdir=tmp_path / "node", env={k: cluster.env[k] for k in keep})


def events(node: NodeProcess) -> list[tuple[int, str, str]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return list(db.execute("SELECT job_id, code, detail FROM job_events ORDER BY id"))


def details(node: NodeProcess, code: str) -> list[str]:
    return [detail for _, c, detail in events(node) if c == code]


def pid_of(detail: str) -> int:
    return int(detail.split(" pid=")[1].split()[0])


def test_the_orthanc_round_trip_runs_on_ray_actors(cluster, tmp_path):
    with (
        orthanc_for_node(tmp_path) as (pacs, node_port),
        ray_node(tmp_path, cluster, node_port, pacs) as node,
    ):
        datasets, truth = make_chest_ct(n_slices=40, seed=12, series_description="Thorax")
        files = write_series(datasets, tmp_path / "series")
        storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
        objects = one_result_each(pacs, datasets[0].StudyInstanceUID, ["SEG", "SR"])
        assert_results_match(objects, datasets[0].SeriesInstanceUID, truth, tmp_path)
        # Results are kept under the job's own directory on the node, as with the local
        # executor; the instances reached the actor through the object store.
        assert len(list(node.results_dir.rglob("*.dcm"))) == 2
        (submitted,) = details(node, "job.submitted")
        assert "executor=ray" in submitted and "transfer=object_store" in submitted
        assert cluster.worker_of_pid(pid_of(submitted)) in (0, 1)
        (remote,) = details(node, "inference.remote")
        inputs = remote.split("inputs=")[1].split()[0]
        assert "/ainode-actor-" in inputs and not inputs.startswith(str(node.data_dir))
        # ``ainode plugins list`` shows the actors, their node and device.
        config = str(node.config_path)
        listing = subprocess.run(
            [sys.executable, "-m", "node", "plugins", "list", "--no-load", "--config", config],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        actors = listing.stdout.split("Ray actors")[1].splitlines()[2:]
        assert len(actors) == 2, listing.stdout + listing.stderr
        assert all("ct_lungs" in line and "ready" in line for line in actors)


def test_killing_the_worker_of_a_running_job_requeues_it_and_sends_once(cluster, tmp_path):
    with (
        orthanc_for_node(tmp_path) as (pacs, node_port),
        ray_node(tmp_path, cluster, node_port, pacs) as node,
    ):
        datasets, _ = make_chest_ct(n_slices=20, seed=21, series_description="Chest")
        files = write_series(datasets, tmp_path / "series")
        storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
        first = wait_until(
            lambda: (details(node, "job.submitted") or [None])[0], 180, message="job sent"
        )
        victim = cluster.worker_of_pid(pid_of(first))
        cluster.kill_worker(victim)  # mid-job: the routine waits DELAY_SECONDS to start
        study_uid = datasets[0].StudyInstanceUID
        objects = one_result_each(pacs, study_uid, ["SEG", "SR"])
        assert set(objects) == {"SEG", "SR"}
        wait_until(lambda: "job.done" in [c for _, c, _ in events(node)], 120, message="job done")
        codes = [c for _, c, _ in events(node)]
        assert codes.count("job.requeued") == 1 and codes.count("job.submitted") == 2
        assert codes.count("export.sent") >= 1
        (requeued,) = details(node, "job.requeued")
        assert "lost" in requeued
        second = details(node, "job.submitted")[1]
        assert cluster.worker_of_pid(pid_of(second)) == 1 - victim
        # Exactly one copy of each result series in the PACS.
        for modality in ("SEG", "SR"):
            (series,) = find_series(pacs.client, study_uid, modality)
            assert len(series["Instances"]) == 1
