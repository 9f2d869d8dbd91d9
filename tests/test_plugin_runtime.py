"""Plugin contract, registry (import/load failures, model cache), worker and CLI."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from node.cli.main import main as cli_main
from node.config import settings_from_mapping
from node.contract.assemble import assemble_volume
from node.contract.kinds import file_tag
from node.contract.plugin import (
    Accepts,
    InferencePlugin,
    PluginInfo,
    Prediction,
    Resources,
    RunContext,
    check_input,
)
from node.contract.volume import Volume
from node.errors import InputRejected, PluginError
from node.orchestration.registry import PluginRegistry, select_devices
from node.orchestration.worker import InferenceWorker
from node.state.jobs import JobQueue
from node.state.series import InstanceRecord, SeriesStore
from tests.support.jobs import enqueue_job
from tests.support.plugins import (
    UNIMPORTABLE_MODULE,
    WORKING_PLUGIN,
    write_distribution,
)
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends


@pytest.fixture(scope="module")
def volume() -> Volume:
    datasets, _ = make_chest_ct(n_slices=24, rows=64, columns=64, pixel_spacing_mm=5.0)
    return assemble_volume(datasets)


# -- Accepts -------------------------------------------------------------------


def test_accepts_lists_every_problem(volume: Volume) -> None:
    accepts = Accepts(
        modalities=("MR",),
        body_parts=("HEAD",),
        min_slices=30,
        slice_spacing_mm=(0.5, 2.0),
        pixel_spacing_mm=(0.5, 1.0),
        min_matrix=128,
    )
    problems = accepts.problems(volume)
    assert problems == [
        "modality CT is not MR",
        "body part CHEST is not HEAD",
        "24 slices; at least 30 are needed",
        "image matrix 64x64 is smaller than 128x128",
        "slice spacing 3.00 mm is outside 0.5-2 mm",
        "pixel spacing 5.00 mm is outside 0.5-1 mm",
    ]
    with pytest.raises(InputRejected, match="modality CT is not MR; body part CHEST"):
        accepts.check(volume)
    assert Accepts(max_slices=10).problems(volume) == ["24 slices; at most 10 are supported"]
    assert Accepts().problems(volume) == []


def test_accepts_checks_plane_and_obliquity(volume: Volume) -> None:
    coronal = volume.affine.copy()
    coronal[:3, 1], coronal[:3, 2] = volume.affine[:3, 2].copy(), volume.affine[:3, 1].copy()
    assert Accepts().problems(dataclasses.replace(volume, affine=coronal)) == [
        "not an axial series: slices are coronal"
    ]
    assert Accepts(planes=("coronal",)).problems(dataclasses.replace(volume, affine=coronal)) == []
    tilted = volume.affine.copy()
    angle = np.radians(25)
    tilted[1, 2], tilted[2, 2] = -np.sin(angle) * 3.0, np.cos(angle) * 3.0
    (problem,) = Accepts(max_obliquity_deg=15).problems(dataclasses.replace(volume, affine=tilted))
    assert "25.0 degrees oblique" in problem


def test_body_part_is_only_checked_when_the_series_has_one(volume: Volume) -> None:
    header = volume.datasets[0].copy()
    del header.BodyPartExamined
    unnamed = dataclasses.replace(volume, datasets=(header, *volume.datasets[1:]))
    assert Accepts(body_parts=("ABDOMEN",)).problems(unnamed) == []


class Echo(InferencePlugin):
    """Labels voxels above 0 HU; counts loads and checks."""

    name = "echo"
    version = "2.0"
    template = "ct_lungs"
    accepts = Accepts(min_slices=10)
    loads = 0

    def load(self, device: torch.device) -> None:
        type(self).loads += 1

    def check(self, volume: Volume) -> None:
        if volume.shape[1] < 32:
            raise InputRejected("too small for echo")

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        return Prediction(label_map=(volume.array > 0).astype(np.uint8))


def test_check_input_runs_the_declaration_before_check(volume: Volume) -> None:
    check_input(Echo(), volume)
    short = dataclasses.replace(volume, array=volume.array[:5], datasets=volume.datasets[:5])
    with pytest.raises(InputRejected, match="5 slices; at least 10"):
        check_input(Echo(), short)


# -- registry ------------------------------------------------------------------


def test_discovery_finds_the_shipped_plugins() -> None:
    registry = PluginRegistry.discover()
    assert {"ct_lungs", "ct_organs"} <= registry.names
    assert not registry.errors
    info = {i.name: i for i in registry.info()}
    assert info["ct_organs"].resources.gpu_memory_mb > 0
    assert info["ct_lungs"].accepts.min_slices == 20


def test_entry_point_plugins_are_discovered_loaded_and_broken_ones_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, volume: Volume
) -> None:
    """A third-party package installed with a ``*.dist-info`` (as pip leaves it) is found
    through the ``ainode.plugins`` entry-point group; broken entry points are reported."""
    site = write_distribution(
        tmp_path / "site-packages",
        "ainode-thirdparty",
        {
            "thirdparty_echo": "ainode_ep_good",
            "thirdparty_class": "ainode_ep_class:ThirdPartyPlugin",
            "thirdparty_nodeps": "ainode_ep_nodeps",
            "thirdparty_missing": "ainode_ep_not_installed",
            "thirdparty_notaplugin": "ainode_ep_good:np",
        },
        {
            "ainode_ep_good": WORKING_PLUGIN.format(name="thirdparty_echo"),
            "ainode_ep_class": WORKING_PLUGIN.format(name="thirdparty_class"),
            "ainode_ep_nodeps": UNIMPORTABLE_MODULE,
        },
    )
    monkeypatch.syspath_prepend(str(site))
    for module in ("ainode_ep_good", "ainode_ep_class", "ainode_ep_nodeps"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    registry = PluginRegistry.discover()
    assert {"ct_lungs", "thirdparty_echo", "thirdparty_class"} <= registry.names
    info = {i.name: i for i in registry.info()}
    assert info["thirdparty_echo"].source == "ainode_ep_good"
    assert info["thirdparty_class"].source == "ainode_ep_class:ThirdPartyPlugin"
    assert (info["thirdparty_echo"].version, info["thirdparty_echo"].template) == (
        "3.1.4",
        "ct_lungs",
    )
    plugin = registry.get("thirdparty_echo", torch.device("cpu"))
    result = plugin.run(volume, RunContext(1, "test", torch.device("cpu")))
    assert result.label_map is not None and result.label_map.shape == volume.shape
    errors = registry.errors
    assert set(errors) == {"thirdparty_nodeps", "thirdparty_missing", "thirdparty_notaplugin"}
    assert errors["thirdparty_nodeps"] == (
        "ImportError: this plugin needs the package 'libfoo', which is not installed"
    )
    assert errors["thirdparty_missing"].startswith("ModuleNotFoundError: No module named")
    assert "does not export an InferencePlugin" in errors["thirdparty_notaplugin"]
    with pytest.raises(PluginError, match="libfoo"):
        registry.get("thirdparty_nodeps", torch.device("cpu"))
    rows = {row.name: row for row in registry.status(torch.device("cpu"))}
    assert rows["thirdparty_echo"].loaded and rows["thirdparty_echo"].error is None
    assert not rows["thirdparty_nodeps"].loaded and "libfoo" in (
        rows["thirdparty_nodeps"].error or ""
    )


def test_import_failure_is_recorded_and_jobs_get_the_reason() -> None:
    registry = PluginRegistry()
    registry._import("broken", "plugins.does_not_exist")
    assert "ModuleNotFoundError" in registry.errors["broken"]
    with pytest.raises(PluginError, match="failed to import: ModuleNotFoundError"):
        registry.get("broken", torch.device("cpu"))
    (row,) = registry.status(torch.device("cpu"))
    assert (row.name, row.loaded) == ("broken", False)
    assert "ModuleNotFoundError" in (row.error or "")


class FailsToLoad(Echo):
    name = "fails"

    def load(self, device: torch.device) -> None:
        raise RuntimeError("weights corrupt")


def test_load_failure_is_recorded_and_retried() -> None:
    registry = PluginRegistry()
    registry.register(FailsToLoad)
    with pytest.raises(PluginError, match="failed to load on cpu: RuntimeError: weights corrupt"):
        registry.get("fails", torch.device("cpu"))
    (row,) = registry.status(torch.device("cpu"))
    assert "weights corrupt" in (row.error or "")
    assert not row.loaded


def test_plugin_is_loaded_once_per_device() -> None:
    Echo.loads = 0
    registry = PluginRegistry()
    registry.register(Echo)
    first = registry.get("echo", torch.device("cpu"))
    assert registry.get("echo", torch.device("cpu")) is first
    assert Echo.loads == 1
    with pytest.raises(PluginError, match="taken by"):
        registry.register(Echo)


def test_gpu_model_cache_evicts_least_recently_used_within_budget() -> None:
    unloaded: list[str] = []

    def make(name: str, memory: int) -> type[InferencePlugin]:
        def unload(self: InferencePlugin) -> None:
            unloaded.append(self.name)

        return type(
            name,
            (Echo,),
            {"name": name, "resources": Resources(gpu_memory_mb=memory), "unload": unload},
        )

    registry = PluginRegistry(gpu_memory_budget_mb=1000)
    for name, memory in (("a", 400), ("b", 400), ("c", 500)):
        registry.register(make(name, memory))
    gpu = torch.device("cuda:0")  # nothing touches CUDA: the plugins are fakes
    registry.get("a", gpu)
    registry.get("b", gpu)
    registry.get("a", gpu)  # a is now the most recently used
    registry.get("c", gpu)  # 400 + 400 + 500 > 1000: b goes
    assert unloaded == ["b"]
    assert registry.is_loaded("a", gpu) and registry.is_loaded("c", gpu)
    assert not registry.is_loaded("b", gpu)
    registry.get("a", torch.device("cpu"))  # the CPU has no budget
    assert unloaded == ["b"]


def test_device_selection() -> None:
    assert select_devices("cpu") == [torch.device("cpu")]
    assert select_devices("auto", ["cuda:1", "cuda:0"]) == [
        torch.device("cuda:1"),
        torch.device("cuda:0"),
    ]
    if not torch.cuda.is_available():
        assert select_devices("auto") == [torch.device("cpu")]
        with pytest.raises(PluginError, match="no CUDA device"):
            select_devices("cuda")


# -- worker --------------------------------------------------------------------


class Explodes(Echo):
    name = "explodes"

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        raise ValueError("model diverged")


class Slow(Echo):
    """Moves the worker's monotonic clock past the deadline, then checks it."""

    name = "slow"
    clock: list[float] = [0.0]

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        self.clock[0] += 100.0
        context.raise_if_expired()
        return super().run(volume, context)


class NeedsGpu(Echo):
    name = "needs_gpu"
    resources = Resources(needs_gpu=True, gpu_memory_mb=100)


class Setup:
    def __init__(self, database, clock, tmp_path: Path, *, timeout: float | None = None) -> None:
        self.series = SeriesStore(database)
        self.queue = JobQueue(database)
        self.registry = PluginRegistry()
        for plugin in (Echo, Explodes, Slow, NeedsGpu):
            self.registry.register(plugin)
        self.registry._import("broken", "plugins.does_not_exist")
        self.clock = clock
        self.worker = InferenceWorker(
            self.queue,
            self.series,
            self.registry,
            device=torch.device("cpu"),
            results_dir=tmp_path / "results",
            templates_dir=None,
            clock=clock,
            job_timeout_seconds=timeout,
            monotonic=lambda: Slow.clock[0],
        )
        datasets, _ = make_chest_ct(n_slices=20, rows=48, columns=48, pixel_spacing_mm=6.0)
        self.series_uid = str(datasets[0].SeriesInstanceUID)
        self.study_uid = str(datasets[0].StudyInstanceUID)
        for ds, path in zip(datasets, write_series(datasets, tmp_path / "spool"), strict=True):
            self.series.record_instance(
                InstanceRecord(
                    sop_uid=str(ds.SOPInstanceUID),
                    series_uid=self.series_uid,
                    study_uid=self.study_uid,
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                    path=path,
                    size=path.stat().st_size,
                    modality="CT",
                ),
                clock(),
            )

    def enqueue(self, plugin: str, rule: str | None = None) -> int:
        return enqueue_job(
            self.queue,
            self.clock(),
            series_uid=self.series_uid,
            study_uid=self.study_uid,
            rule=rule or plugin,
            plugin=plugin,
        )


def test_a_failing_plugin_fails_only_its_job(database, clock, tmp_path: Path) -> None:
    setup = Setup(database, clock, tmp_path)
    bad = setup.enqueue("explodes")
    broken = setup.enqueue("broken")
    gpu = setup.enqueue("needs_gpu")
    good = setup.enqueue("echo")
    while setup.worker.run_once():
        pass
    jobs = {job.id: job for job in setup.queue.jobs()}
    assert jobs[bad].state == "failed"
    assert jobs[bad].error == "ValueError: model diverged"
    assert jobs[broken].state == "failed"
    assert "failed to import: ModuleNotFoundError" in (jobs[broken].error or "")
    assert jobs[gpu].state == "failed"
    assert "needs a GPU" in (jobs[gpu].error or "")
    assert jobs[good].state == "done"
    assert jobs[good].result_dir is not None
    written = jobs[good].result_dir.glob("*.dcm")
    assert sorted(str(file_tag(p.name)) for p in written) == ["seg", "sr"]  # <tag>_<uid>.dcm


def test_timeout_fails_the_job(database, clock, tmp_path: Path) -> None:
    Slow.clock[0] = 0.0
    setup = Setup(database, clock, tmp_path, timeout=50.0)
    job_id = setup.enqueue("slow")
    assert setup.worker.run_once()
    job = setup.queue.get(job_id)
    assert job is not None and job.state == "failed"
    assert (job.error or "").startswith("JobTimeout")


def test_next_series_is_read_while_the_current_job_runs(database, clock, tmp_path: Path) -> None:
    setup = Setup(database, clock, tmp_path)
    first = setup.enqueue("explodes", rule="first")  # fails after loading: fast
    second = setup.enqueue("explodes", rule="second")
    setup.worker.run_once()
    setup.worker.run_once()
    details = {
        job_id: [e.detail for e in setup.queue.events(job_id) if e.event == "volume_loaded"]
        for job_id in (first, second)
    }
    assert "prefetched=False" in details[first][0]
    assert "prefetched=True" in details[second][0]


# -- CLI -----------------------------------------------------------------------


def test_plugins_list_shows_versions_devices_and_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            workers: {{device: cpu}}
            models:
              missing-ts:
                type: torchscript
                path: {tmp_path / "nope.ts"}
                template: ct_organs
                spacing_mm: [4, 4, 4]
                window: {{a_min: -1000, a_max: 400}}
                labels: [background, liver]
            """
        ),
        encoding="utf-8",
    )
    code = cli_main(["plugins", "list", "--config", str(config)])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 1  # one plugin is unavailable
    assert "1.0.0" in lines["ct_lungs"] and "cpu" in lines["ct_lungs"]
    assert lines["ct_lungs"].rstrip().endswith("loaded")
    assert lines["ct_organs"].rstrip().endswith("loaded")
    assert "FAILED" in lines["missing-ts"] and "TorchScript file not found" in lines["missing-ts"]


def test_config_models_section_validates() -> None:
    settings = settings_from_mapping(
        {
            "models": {
                "organs.v1": {
                    "type": "monai_bundle",
                    "path": "/opt/bundles/organs",
                    "template": "ct_organs",
                    "accepts": {"body_parts": ["ABDOMEN"], "min_slices": 20},
                    "resources": {"needs_gpu": True, "gpu_memory_mb": 4000},
                }
            },
            "rules": [{"name": "r", "plugin": "organs.v1"}],
        },
        environ={},
    )
    model = settings.models["organs.v1"]
    assert model.type == "monai_bundle"
    assert model.resources.gpu_memory_mb == 4000
    with pytest.raises(Exception, match=r"models\.Bad: model names"):
        settings_from_mapping(
            {"models": {"Bad": {"type": "monai_bundle", "path": "x", "template": "t"}}},
            environ={},
        )
    with pytest.raises(Exception, match=r"models\.m\.torchscript\.labels"):
        settings_from_mapping(
            {
                "models": {
                    "m": {
                        "type": "torchscript",
                        "path": "x.ts",
                        "template": "t",
                        "spacing_mm": [1, 1, 1],
                        "window": {"a_min": 0, "a_max": 1},
                    }
                }
            },
            environ={},
        )


def test_registry_entry_info_for_configured_models_is_known_without_loading() -> None:
    info = PluginInfo("x", "1", "ct_organs", "torchscript:/x.ts")
    assert info.accepts == Accepts() and info.resources == Resources()
