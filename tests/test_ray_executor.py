"""The Ray executor against a real local Ray (``ray.init`` in this process).

Instance files travel through the object store (the actor writes them under its own
temporary directory; the node's spool may be gone by then), results come back as
bytes written under the job's result directory, at most ``max_in_flight_per_actor``
jobs are at one actor, queued jobs are sent most urgent first, and a job whose actor
dies is re-queued by the worker and runs again on the restarted actor.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from node.config import BUILT_IN_CHEST_RULE, ExecutorSettings
from node.contract.plugin import InferencePlugin, Resources
from node.orchestration.executor import JobLost
from node.orchestration.job import DONE, JobInput
from node.orchestration.registry import PluginRegistry
from node.orchestration.worker import PipelinedWorker
from node.results.manifest import check_results
from node.results.plan import ResultPlan
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.series import SeriesStore
from tests.support.admin import VIEWER_PASSWORD, login_session, served_node
from tests.support.dcmtk import storescu
from tests.support.jobs import enqueue_series
from tests.support.net import wait_until
from tests.support.ray_cluster import local_ray
from tests.support.ray_plugins import BodyAbove0, SlowBody
from tests.support.spool import spool_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

PLUGINS: dict[str, type[InferencePlugin]] = {p.name: p for p in (BodyAbove0, SlowBody)}


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray(num_cpus=2):
        yield


class Events:
    """The executor's events, in the order it gave them."""

    def __init__(self) -> None:
        self.items: list[tuple[int, EventCode, str]] = []
        self._lock = threading.Lock()

    def __call__(self, job_id: int, code: EventCode, detail: str) -> None:
        with self._lock:
            self.items.append((job_id, code, detail))

    def of(self, code: EventCode) -> list[tuple[int, str]]:
        with self._lock:
            return [(job_id, detail) for job_id, c, detail in self.items if c == code]


def executor(events: Events, **settings: object):
    from node.orchestration.ray_executor import RayExecutor

    return RayExecutor(
        ExecutorSettings(kind="ray", actors_per_routine=1, **settings),  # type: ignore[arg-type]
        models={},
        templates_dir=None,
        resources=lambda name: Resources(),
        on_event=events,
        extra_plugins=list(PLUGINS.values()),
    )


def job_input(tmp_path: Path, job_id: int, *, plugin: str = "ray_body", priority: int = 5):
    datasets, _ = make_chest_ct(n_slices=3, rows=32, columns=32, seed=job_id)
    paths = write_series(datasets, tmp_path / "spool" / str(job_id))
    return JobInput(
        job_id=job_id,
        rule="chest",
        plugin=plugin,
        plugin_version="1.0.0",
        device="cpu",
        template="ct_lungs",
        templates_dir=None,
        study_uid=str(datasets[0].StudyInstanceUID),
        series_uid=str(datasets[0].SeriesInstanceUID),
        instance_paths=tuple(paths),
        plan=ResultPlan.for_job([], {}),
        result_dir=tmp_path / "results" / f"job-{job_id}",
        priority=priority,
    )


def test_inputs_travel_through_the_object_store_and_results_come_back(ray_session, tmp_path):
    events = Events()
    ray_executor = executor(events)
    try:
        job = job_input(tmp_path, 1)
        future = ray_executor.submit(job)
        # The files were read and put into the object store when submitted: the actor needs
        # no path of the node's (not even on this same machine).
        shutil.rmtree(tmp_path / "spool")
        output = future.result(timeout=120)
    finally:
        ray_executor.shutdown()
    assert output.outcome == DONE, output.reason
    assert output.result_dir == job.result_dir
    assert check_results(job.result_dir) is None  # whole, as the manifest lists them
    tags = sorted(f.tag for f in output.files)
    assert [f.path.parent for f in output.files] == [job.result_dir] * len(tags)
    assert sorted(p.name for p in job.result_dir.glob("*.dcm")) == sorted(
        f.path.name for f in output.files
    )
    ((_, remote),) = events.of(EventCode.INFERENCE_REMOTE)
    inputs = remote.split("inputs=")[1].split()[0]
    assert "/ainode-actor-" in inputs and not inputs.startswith(str(tmp_path))
    ((_, submitted),) = events.of(EventCode.JOB_SUBMITTED)
    assert "transfer=object_store" in submitted and f"pid={os.getpid()}" not in submitted


def test_in_flight_bound_and_priority_order_of_submission(ray_session, tmp_path):
    events = Events()
    ray_executor = executor(events, max_in_flight_per_actor=2)
    try:
        # Warm the actor, then fill its two slots; the next four wait here.
        assert ray_executor.submit(job_input(tmp_path, 1, plugin="ray_body_slow")).result(120)
        first = [
            ray_executor.submit(job_input(tmp_path, i, plugin="ray_body_slow", priority=p))
            for i, p in ((2, 5), (3, 6))
        ]
        waiting = {4: 9, 5: 0, 6: 7, 7: 3}  # job id: priority, submitted in this order
        futures = [
            ray_executor.submit(job_input(tmp_path, i, plugin="ray_body_slow", priority=p))
            for i, p in waiting.items()
        ]
        assert ray_executor.pending() == 4 and not ray_executor.has_room()
        peak = 0
        while not all(f.done() for f in first + futures):
            peak = max(peak, *ray_executor.in_flight().values())
            time.sleep(0.05)
        outputs = [f.result() for f in first + futures]
    finally:
        ray_executor.shutdown()
    assert all(o.outcome == DONE for o in outputs)
    assert peak == 2
    submitted = [job_id for job_id, _ in events.of(EventCode.JOB_SUBMITTED)]
    assert submitted == [1, 2, 3, 5, 7, 6, 4]  # the waiting ones by priority 0, 3, 7, 9
    in_flight = [
        int(d.split("in_flight=")[1].split()[0]) for _, d in events.of(EventCode.JOB_SUBMITTED)
    ]
    assert max(in_flight) == 2


def test_a_job_whose_actor_dies_is_requeued_and_runs_again(ray_session, tmp_path, database):
    from node.orchestration.ray_executor import RayExecutor

    series = SeriesStore(database)
    # A short lease: the job is away far longer (the actor starts, dies, restarts), so it
    # stays the worker's only because the worker renews the lease meanwhile.
    queue = JobQueue(database, lease_seconds=3)
    registry = PluginRegistry()
    registry.register(SlowBody)
    ray_executor = RayExecutor(
        ExecutorSettings(kind="ray", actors_per_routine=1),
        models={},
        templates_dir=None,
        resources=lambda name: registry.plugin_info(name).resources,
        on_event=lambda job_id, code, detail: queue.add_event(job_id, time.time(), code, detail),
        extra_plugins=[SlowBody],
    )
    worker = PipelinedWorker(
        queue,
        series,
        registry,
        executor=ray_executor,
        device=torch.device("cpu"),
        results_dir=tmp_path / "results",
        templates_dir=None,
        clock=time.time,
        prefetch=False,
    )
    datasets, _ = make_chest_ct(n_slices=3, rows=32, columns=32, seed=3)
    spool_series(series, datasets, tmp_path / "spool", time.time())
    job_id = enqueue_series(queue, datasets, rule="chest", plugin="ray_body_slow", now=time.time())
    worker.start()
    try:

        def submitted() -> list[str]:
            return [e.detail for e in queue.events(job_id) if e.code == EventCode.JOB_SUBMITTED]

        detail = wait_until(lambda: submitted()[0] if submitted() else None, 120, message="sent")
        pid = int(detail.split(" pid=")[1].split()[0])
        killed_workdirs = Path(tempfile.gettempdir()).glob(f"ainode-actor-{pid}@*")
        assert len(list(killed_workdirs)) == 1
        os.kill(pid, signal.SIGKILL)  # the actor's process dies mid-job
        wait_until(lambda: queue.get(job_id).state == "done", 180, message="job done")
    finally:
        worker.stop()
        ray_executor.shutdown()
    codes = [e.code for e in queue.events(job_id)]
    assert codes.count(EventCode.JOB_REQUEUED) == 1
    assert codes.count(EventCode.JOB_SUBMITTED) == 2 and codes.count(EventCode.JOB_STARTED) == 2
    assert EventCode.JOB_LEASE_EXPIRED not in codes
    requeued = next(e for e in queue.events(job_id) if e.code == EventCode.JOB_REQUEUED)
    assert "lost" in requeued.detail
    second = submitted()[1]
    assert f"pid={pid}" not in second  # a new actor process (Ray restarted it)
    job = queue.get(job_id)
    assert job.attempts == 2 and check_results(job.result_dir) is None
    # The new actor removed the killed one's directory, with the job's instances in it.
    assert list(Path(tempfile.gettempdir()).glob(f"ainode-actor-{pid}@*")) == []


def test_actor_directories_of_processes_gone_from_this_host_are_removed(tmp_path):
    from node.orchestration.ray_actor import remove_stale_workdirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    names = {
        "gone": f"ainode-actor-{gone.pid}@{host}-ab_12cd",
        "running": f"ainode-actor-{os.getpid()}@{host}-xy34z_9q",
        "other host": f"ainode-actor-{gone.pid}@{host}x-ab_12cd",
        "not ours": f"ainode-data-{gone.pid}@{host}-ab_12cd",
    }
    for name in names.values():
        (tmp_path / name / "job-1-0f0f0f0f" / "in").mkdir(parents=True)
        (tmp_path / name / "job-1-0f0f0f0f" / "in" / "000000-CT.dcm").write_bytes(b"x")
    assert remove_stale_workdirs(tmp_path) == [tmp_path / names["gone"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for key, name in names.items() if key != "gone"
    )


def test_a_lost_job_fails_its_future_with_job_lost(ray_session, tmp_path):
    events = Events()
    ray_executor = executor(events)
    try:
        future = ray_executor.submit(job_input(tmp_path, 1, plugin="ray_body_slow"))
        detail = wait_until(
            lambda: (events.of(EventCode.JOB_SUBMITTED) or [(0, None)])[0][1], 120, message="sent"
        )
        os.kill(int(detail.split(" pid=")[1].split()[0]), signal.SIGKILL)
        with pytest.raises(JobLost, match="lost"):
            future.result(timeout=120)
        # The restarted actor takes jobs again.
        again = ray_executor.submit(job_input(tmp_path, 2, plugin="ray_body"))
        # A generous bound: a fresh actor imports torch, slow on 2 cores beside other workers.
        assert again.result(timeout=400).outcome == DONE
    finally:
        ray_executor.shutdown()


def test_a_node_with_the_ray_executor_lists_its_actors(ray_session, tmp_path):
    """The node wired with ``executor.kind: ray`` runs a received series on an actor, and
    ``/api/plugins`` and the console's Plugins page show the actor, its node and device."""
    config = {
        "executor": {"kind": "ray", "actors_per_routine": 1, "namespace": "ainode-test"},
        "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.25},
        "rules": [{**BUILT_IN_CHEST_RULE, "send_to": []}],
    }
    with served_node(tmp_path / "var", config) as served:
        datasets, _ = make_chest_ct(n_slices=20, rows=64, columns=64, pixel_spacing_mm=3.0, seed=4)
        storescu(served.dicom_port, write_series(datasets, tmp_path / "in"), "SCANNER")
        queue = served.node.queue
        ended = ("done", "failed", "skipped")
        wait_until(
            lambda: [j.state for j in queue.jobs()] in ([e] for e in ended), 300, message="end"
        )
        (job,) = queue.jobs()
        assert job.state == "done", job.error
        codes = [e.code for e in queue.events(job.id)]
        assert EventCode.JOB_SUBMITTED in codes and EventCode.INFERENCE_REMOTE in codes
        assert check_results(job.result_dir) is None
        with served.client(served.viewer_token) as client:
            plugins = {p["name"]: p for p in client.get("/api/plugins").json()}
        (actor,) = plugins["ct_lungs"]["ray_actors"]
        assert actor["state"] == "ready" and actor["device"] == "cpu" and actor["node_id"]
        assert actor["pid"] != os.getpid() and actor["in_flight"] == 0
        # The actor froze its start-up objects (torch, MONAI, the routine) as `serve` does.
        assert actor["heap_frozen"] > 100_000
        page_client, _ = login_session(served.url, "viewer", VIEWER_PASSWORD)
        try:
            page = page_client.get("/plugins")
        finally:
            page_client.close()
        assert page.status_code == 200 and "Ray actors" in page.text
        assert actor["name"] in page.text and actor["node_id"][:12] in page.text
