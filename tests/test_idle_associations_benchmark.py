"""The idle-associations benchmark runs against a real Orthanc and node, and prints and
plots its result (it measures and asserts no speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.idle_associations import (
    RECEIVERS,
    idle_associations_table,
    plot,
    run_idle_associations,
)


@pytest.mark.slow
def test_idle_associations_are_held_on_each_receiver_and_reported(tmp_path: Path) -> None:
    result = run_idle_associations(tmp_path / "work", count=4, seconds=0.5)
    assert result["associations"] == 4
    for name in RECEIVERS:
        row = result["receivers"][name]
        assert row["idle_cores"] >= 0 and row["held_cores"] >= 0
        assert row["open_seconds"] > 0
    lines = idle_associations_table(result)
    assert [line.split()[0] for line in lines[2:]] == list(RECEIVERS)
    plot(result, tmp_path / "idle.png")
    assert (tmp_path / "idle.png").read_bytes().startswith(b"\x89PNG")
