"""The ``executor:`` section, the Ray actors' resources, and giving a lost job back."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ExecutorSettings, load_settings, settings_from_mapping
from node.contract.plugin import Resources
from node.errors import ConfigError
from node.state.events import EventCode
from node.state.jobs import JobQueue
from tests.support.jobs import enqueue_job


def load(tmp_path: Path, text: str):
    path = tmp_path / "ainode.yaml"
    path.write_text(text)
    return load_settings(path, environ={})


def test_the_default_is_the_local_executor():
    assert settings_from_mapping({}, environ={}).executor.kind == "local"


def test_a_ray_executor_section_loads(tmp_path):
    settings = load(
        tmp_path,
        "executor: {kind: ray, address: 'ray://head.hospital:10001', namespace: radiology,"
        " max_in_flight_per_actor: 3, gpu_resource: ainode_gpu, gpu_memory_mb: 24000,"
        " spool: shared}\n",
    )
    executor = settings.executor
    assert (executor.kind, executor.address, executor.namespace) == (
        "ray",
        "ray://head.hospital:10001",
        "radiology",
    )
    assert executor.max_in_flight_per_actor == 3 and executor.spool == "shared"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("executor: {kind: dask}", "executor.kind"),
        (
            "executor: {kind: ray, address: 'http://head:8265'}",
            "executor.address: must be 'auto', 'host:port' or 'ray://host:port'",
        ),
        ("executor: {kind: ray, max_in_flight_per_actor: 0}", "executor.max_in_flight_per_actor"),
        ("executor: {kind: ray, spool: nfs}", "executor.spool"),
        ("executor: {kind: ray, adress: auto}", "executor.adress: unknown key"),
        ("executor: {kind: ray, gpu_resource: 'my gpu'}", "executor.gpu_resource"),
    ],
)
def test_a_bad_executor_section_names_the_key(tmp_path, line, expected):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, line + "\n")
    assert expected in str(caught.value)


def test_kind_ray_without_ray_installed_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"executor\.kind: ray is not installed.*ainode\[ray\]"):
        load(tmp_path, "executor: {kind: ray}\n")
    # The local executor does not need it.
    assert load(tmp_path, "executor: {kind: local}\n").executor.kind == "local"


def test_a_local_node_never_imports_ray():
    code = (
        "import sys\n"
        "from node.config import settings_from_mapping\n"
        "import node.app, node.orchestration.worker, node.cli.main\n"
        "settings_from_mapping({'executor': {'kind': 'local'}}, environ={})\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_actor_resources_follow_the_routines_declaration():
    from node.orchestration.ray_executor import actor_options

    settings = ExecutorSettings(kind="ray", gpu_memory_mb=24000, cpus_per_actor=2)
    gpus = {"GPU": 4.0, "CPU": 32.0}
    # A CPU-only routine runs on CPUs.
    assert actor_options(settings, Resources(), gpus) == {"num_cpus": 2}
    # A GPU routine gets its declared share of one GPU ...
    assert actor_options(settings, Resources(gpu_memory_mb=6000), gpus) == {
        "num_cpus": 0,
        "num_gpus": 0.25,
    }
    # ... a whole one when it declares more than a GPU has, or nothing, or the size is unknown.
    assert actor_options(settings, Resources(gpu_memory_mb=40000), gpus)["num_gpus"] == 1.0
    assert actor_options(settings, Resources(needs_gpu=True), gpus)["num_gpus"] == 1.0
    unsized = ExecutorSettings(kind="ray")
    assert actor_options(unsized, Resources(gpu_memory_mb=6000), gpus)["num_gpus"] == 1.0
    # A custom resource stands in for the GPU; a cluster without it runs the routine on CPUs.
    custom = ExecutorSettings(kind="ray", gpu_resource="ainode_gpu", gpu_memory_mb=12000)
    assert actor_options(custom, Resources(gpu_memory_mb=6000), {"ainode_gpu": 2.0}) == {
        "num_cpus": 0,
        "resources": {"ainode_gpu": 0.5},
    }
    assert actor_options(custom, Resources(gpu_memory_mb=6000), {"CPU": 8.0}) == {"num_cpus": 1.0}


def test_requeue_gives_a_lost_job_back_only_by_its_holder(database, clock):
    queue = JobQueue(database)
    job_id = enqueue_job(queue, clock())
    job = queue.claim_next(clock(), "host:1:worker-ray")
    assert job is not None and job.id == job_id
    assert not queue.requeue(job_id, "host:2:worker-ray", clock(), "not its job")
    assert queue.get(job_id).state == "running"
    assert queue.requeue(job_id, "host:1:worker-ray", clock(), "ray actor x lost: died")
    again = queue.get(job_id)
    assert (again.state, again.owner, again.lease_expires_at) == ("queued", None, None)
    requeued = [e for e in queue.events(job_id) if e.code == EventCode.JOB_REQUEUED]
    assert [e.detail for e in requeued] == ["ray actor x lost: died"]
    # It is claimed again like any queued job.
    assert queue.claim_next(clock(), "host:1:worker-ray").attempts == 2
