"""The input-quality gate: measurements, decisions per rule, and what the job and SR show.

Every check is made to fail by a synthetic chest CT changed for it (extra noise, a
missing slice, a duplicated slice, a metal insert with streaks, motion with ghosts and
streaks but no metal, 8-bit data, clipped data, another kernel, contrast) and the
decision is asserted for each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.app import Node
from node.config import QualitySettings, settings_from_mapping
from node.contract.assemble import assemble_volume
from node.contract.kinds import ResultKind, file_tag, tag_kind
from node.contract.plugin import ValidatedInput
from node.engine.quality import assess, measure, noise_sd
from node.errors import ConfigError
from node.orchestration.registry import PluginRegistry
from node.results.quality_note import quality_warnings_of
from plugins.ct_lungs import CtLungsPlugin
from tests.support.node import listening_node, send_to_node, stepped_settings
from tests.support.validators import dciodvfy_errors, dsrdump
from tools.synthetic import degraded
from tools.synthetic.chest_ct import make_chest_ct, write_series

VALIDATED = ValidatedInput(
    modalities=("CT",),
    sop_classes=("1.2.840.10008.5.1.4.1.1.2",),
    slice_thickness_mm=(1.0, 5.0),
    pixel_spacing_mm=(0.5, 2.5),
    kernels=("STANDARD",),
    contrast="absent",
    photometric_interpretations=("MONOCHROME2",),
    min_bits_stored=12,
    noise=(5.0, 30.0),
)


@pytest.fixture(scope="module")
def chest() -> list[Dataset]:
    datasets, _ = make_chest_ct(n_slices=30, rows=96, columns=96, seed=2, noise_sd_hu=15.0)
    return degraded.with_header(datasets, ConvolutionKernel="STANDARD")


def _failed(datasets: Sequence[Dataset], policy: QualitySettings | None = None) -> set[str]:
    volume = assemble_volume(datasets)
    _, decision = assess(volume.array, volume.datasets, VALIDATED, policy or QualitySettings())
    return {check.name for check in decision.failed}


# -- measurements ------------------------------------------------------------------


def test_noise_estimate_follows_the_added_noise() -> None:
    for sd in (10.0, 25.0, 60.0):
        datasets, _ = make_chest_ct(n_slices=12, rows=96, columns=96, seed=4, noise_sd_hu=sd)
        measured = noise_sd(assemble_volume(datasets).array)
        assert measured == pytest.approx(sd, rel=0.15), (sd, measured)


def test_the_clean_series_passes_every_check(chest: list[Dataset]) -> None:
    assert _failed(chest) == set()


@pytest.mark.parametrize(
    ("name", "change", "check"),
    [
        ("extra noise", lambda d: degraded.add_noise(d, 50.0, seed=1), "noise"),
        ("metal insert", lambda d: degraded.insert_metal(d, [12, 13, 14]), "metal"),
        ("motion", lambda d: degraded.add_motion(d, [12, 13, 14]), "streaks"),
        ("8-bit data", degraded.to_8_bit, "bit_depth"),
        ("clipped data", lambda d: degraded.clip_hu(d, -1024.0, 150.0), "clipping"),
        ("bone kernel", lambda d: degraded.with_header(d, ConvolutionKernel="BONE"), "kernel"),
        ("contrast", lambda d: degraded.with_header(d, ContrastBolusAgent="IODINE"), "contrast"),
        ("thick slices", lambda d: degraded.with_header(d, SliceThickness="8"), "slice_thickness"),
    ],
)
def test_an_input_made_to_fail_a_check_fails_it(
    chest: list[Dataset], name: str, change: object, check: str
) -> None:
    failed = _failed(change(chest))  # type: ignore[operator]
    assert check in failed, (name, failed)
    if check == "metal":  # the streaks the insert casts are measured too
        assert "streaks" in failed


def test_metal_streaks_raise_the_streak_index(chest: list[Dataset]) -> None:
    clean = assemble_volume(chest)
    metal = assemble_volume(degraded.insert_metal(chest, [12, 13, 14]))
    before = measure(clean.array, clean.datasets, VALIDATED)
    after = measure(metal.array, metal.datasets, VALIDATED)
    assert before.streak_index is not None and after.streak_index is not None
    assert before.streak_index < 1.5 < 3.0 < after.streak_index
    assert after.metal_fraction is not None and after.metal_fraction > 1e-4


def test_motion_is_caught_by_the_streak_check_alone(chest: list[Dataset]) -> None:
    """The other cause of streaks: a breath during three rotations (ghosted anatomy and
    bands along the inconsistent view) and no metal; the clean series passes."""
    moved = degraded.add_motion(chest, [12, 13, 14])
    assert _failed(chest) == set()
    assert _failed(moved) == {"streaks"}
    clean = assemble_volume(chest)
    motion = assemble_volume(moved)
    before = measure(clean.array, clean.datasets, VALIDATED)
    after = measure(motion.array, motion.datasets, VALIDATED)
    assert before.streak_index is not None and after.streak_index is not None
    assert before.streak_index < 1.5 < VALIDATED.max_streak_index < after.streak_index
    assert after.metal_fraction == 0.0
    # Only the three moved slices carry the artefact; the others are unchanged.
    changed = (motion.array != clean.array).any(axis=(1, 2))
    assert int(changed.sum()) == 3


def test_policy_picks_the_most_severe_action(chest: list[Dataset]) -> None:
    noisy_8bit = degraded.to_8_bit(degraded.add_noise(chest, 50.0, seed=1))
    volume = assemble_volume(noisy_8bit)

    def decide(policy: QualitySettings) -> str:
        return assess(volume.array, volume.datasets, VALIDATED, policy)[1].action

    assert decide(QualitySettings(on_fail="warn")) == "warn"
    assert decide(QualitySettings(on_fail="run")) == "run"
    assert decide(QualitySettings(on_fail="warn", checks={"bit_depth": "skip"})) == "skip"
    mixed = QualitySettings(on_fail="skip", checks={"noise": "run", "bit_depth": "warn"})
    assert decide(mixed) == "warn"
    _, decision = assess(
        volume.array, volume.datasets, VALIDATED, QualitySettings(checks={"noise": "run"})
    )
    assert [w.split(":")[0] for w in decision.warnings] == ["bit_depth"]
    assert [w.split(":")[0] for w in decision.ignored] == ["noise"]


# -- configuration -------------------------------------------------------------------


def _rule(quality: object) -> dict[str, object]:
    return {"rules": [{"name": "r", "plugin": "ct_lungs", "quality": quality}]}


def test_quality_settings_are_validated() -> None:
    settings = settings_from_mapping(
        _rule({"on_fail": "skip", "checks": {"noise": "warn"}}), environ={}
    )
    assert settings.rules[0].quality.action("noise") == "warn"
    assert settings.rules[0].quality.action("metal") == "skip"
    with pytest.raises(ConfigError, match=r"rules\[0\]\.quality\.checks: .*unknown quality check"):
        settings_from_mapping(_rule({"checks": {"sharpness": "skip"}}), environ={})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.quality\.on_fail"):
        settings_from_mapping(_rule({"on_fail": "maybe"}), environ={})
    with pytest.raises(ConfigError, match="missing_slices can only skip"):
        settings_from_mapping(_rule({"checks": {"missing_slices": "run"}}), environ={})
    with pytest.raises(ConfigError, match=r"noise: the lower bound"):
        settings_from_mapping(
            {
                "models": {
                    "m": {
                        "type": "torchscript",
                        "path": "/x.ts",
                        "template": "ct_organs",
                        "spacing_mm": [4, 4, 4],
                        "window": {"a_min": -1000, "a_max": 400},
                        "labels": ["background", "body"],
                        "validated_on": {"noise": [30, 5]},
                    }
                }
            },
            environ={},
        )


# -- through the node: job events, job state, SR ----------------------------------------


class GatedLungs(CtLungsPlugin):
    """The lung routine with a declared validated input."""

    name = "ct_lungs_gated"
    validated_on = VALIDATED


@pytest.fixture
def node(tmp_path: Path, clock: object):
    registry = PluginRegistry.discover()
    registry.register(GatedLungs, source="test")

    def rule(name: str, quality: dict[str, object]) -> dict[str, object]:
        return {
            "name": name,
            "match": {"SeriesDescription": {"regex": f"^{name} "}},
            "plugin": "ct_lungs_gated",
            "quality": quality,
        }

    settings = stepped_settings(
        tmp_path,
        {
            "rules": [
                rule("warn", {"on_fail": "warn"}),
                rule("skip", {"on_fail": "warn", "checks": {"metal": "skip", "streaks": "skip"}}),
                rule("run", {"on_fail": "run"}),
            ],
        },
    )
    with listening_node(settings, clock, registry) as node:  # type: ignore[arg-type]
        yield node


def _series(chest: list[Dataset], description: str, seed: int) -> list[Dataset]:
    datasets, _ = make_chest_ct(
        n_slices=30, rows=96, columns=96, seed=seed, noise_sd_hu=15.0,
        series_description=description,
    )  # fmt: skip
    return degraded.with_header(datasets, ConvolutionKernel="STANDARD")


@pytest.mark.slow  # a real SCP and five series through the node
def test_decisions_reach_the_job_and_the_sr(
    node: Node, clock, chest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cases = {
        "warn noisy": degraded.add_noise(_series(chest, "warn noisy", 11), 50.0, seed=1),
        "warn duplicated": degraded.duplicate_slice(_series(chest, "warn duplicated", 12), 10),
        "warn missing": degraded.drop_slice(_series(chest, "warn missing", 13), 15),
        "skip metal": degraded.insert_metal(_series(chest, "skip metal", 14), [12, 13, 14]),
        "run 8bit": degraded.to_8_bit(_series(chest, "run 8bit", 16)),
    }
    for index, datasets in enumerate(cases.values()):
        send_to_node(node, write_series(datasets, tmp_path / f"in{index}"))
    clock.advance(11)
    assert len(node.completion.poll()) == len(cases)
    while node.worker.run_once():
        pass
    jobs = {}
    for job in node.queue.jobs():
        header = pydicom.dcmread(
            node.series.instance_paths(job.series_uid)[0], stop_before_pixels=True
        )
        jobs[str(header.SeriesDescription)] = job
    assert set(jobs) == set(cases)
    listed = {p["name"]: p for p in node.admin.plugins()}
    assert listed["ct_lungs_gated"]["validated_on"]["noise"] == (5.0, 30.0)
    # The shipped routine declares what it was validated on (tests/test_validated_inputs.py).
    assert listed["ct_lungs"]["validated_on"]["noise"] == (9.0, 36.0)

    def events(description: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for event in node.queue.events(jobs[description].id):
            found.setdefault(event.event, []).append(event.detail)
        return found

    def sr_warnings(description: str) -> list[str]:
        job = node.queue.get(jobs[description].id)
        assert job is not None and job.result_dir is not None
        (sr_path,) = [
            p for p in job.result_dir.glob("*.dcm") if tag_kind(file_tag(p.name)) is ResultKind.SR
        ]
        assert dciodvfy_errors(sr_path) == []
        dumped = dsrdump(sr_path)  # dcmtk reads the content tree, notes included
        assert dumped.returncode == 0, dumped.stderr
        warnings = quality_warnings_of(pydicom.dcmread(sr_path))
        assert ('TEXT:(,,"Quality Issue")' in dumped.stdout) == bool(warnings)
        return warnings

    # Extra noise under "warn": runs, the warning is in the job and in the SR.
    noisy = node.queue.get(jobs["warn noisy"].id)
    assert noisy is not None and noisy.state == "done"
    assert any(w.startswith("noise: ") for w in events("warn noisy")["quality_warning"])
    (warning,) = sr_warnings("warn noisy")
    assert warning.startswith("noise: ") and "validated on 5-30" in warning

    # A duplicated slice: measured, dropped, run with a warning.
    duplicated = node.queue.get(jobs["warn duplicated"].id)
    assert duplicated is not None and duplicated.state == "done", duplicated.error
    assert "1 duplicated slice position" in sr_warnings("warn duplicated")[0]

    # A missing slice skips whatever on_fail says: no grid to run on; the reason is on the job.
    missing = node.queue.get(jobs["warn missing"].id)
    assert missing is not None and missing.state == "skipped"
    assert "skipped by the input-quality gate: missing_slices: 1 missing" in (missing.error or "")
    assert "quality_skipped" in events("warn missing")
    (skip_detail,) = events("warn missing")["skipped"]
    assert json.loads(skip_detail)["source"] == "quality"
    assert [c["check"] for c in json.loads(skip_detail)["checks"]] == ["missing_slices"]

    # Metal under a rule that skips metal: skipped, with both checks named.
    metal = node.queue.get(jobs["skip metal"].id)
    assert metal is not None and metal.state == "skipped" and metal.result_dir is None
    assert "metal: " in (metal.error or "") and "streaks: " in (metal.error or "")
    (skip_detail,) = events("skip metal")["skipped"]
    assert {c["check"] for c in json.loads(skip_detail)["checks"]} == {"metal", "streaks"}
    # Skips are warnings, not errors; counted apart from failures, per routine and check.
    assert f"job skipped job_id={metal.id}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert node.queue.depth()["failed"] == 0 and node.queue.depth()["skipped"] == 2

    # 8-bit data under "run": runs, the failed check is recorded on the job but not in the SR.
    eight = node.queue.get(jobs["run 8bit"].id)
    assert eight is not None and eight.state == "done"
    assert any(d.startswith("bit_depth: 8 bits") for d in events("run 8bit")["quality_ignored"])
    assert sr_warnings("run 8bit") == []
    checked = events("run 8bit")["quality_checked"][0]
    assert checked.startswith("run slices=30 missing=0 duplicates=0 noise=")
