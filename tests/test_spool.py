"""The spool writes each instance whole under its final name, in its series directory."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from node.errors import SpoolError
from node.spool import Spool

STUDY, SERIES = "1.2.3", "1.2.3.4"


def test_a_series_directory_removed_meanwhile_is_made_again(tmp_path: Path) -> None:
    """The spool remembers the series directories it made (no mkdir per instance); one
    removed since (retention, an operator) is made again for the next instance."""
    spool = Spool(tmp_path / "spool")
    first = spool.write(STUDY, SERIES, "1.2.3.4.1", b"first")
    assert first.read_bytes() == b"first"
    shutil.rmtree(first.parent)
    second = spool.write(STUDY, SERIES, "1.2.3.4.2", (b"sec", b"ond"), sync_parent=False)
    assert second.read_bytes() == b"second"
    assert sorted(p.name for p in second.parent.iterdir()) == ["1.2.3.4.2.dcm"]


def test_a_directory_that_cannot_be_made_is_a_spool_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.own / STUDY).write_bytes(b"a file where the study directory belongs")
    with pytest.raises(SpoolError, match=re.escape("cannot write 1.2.3.4.1.dcm")):
        spool.write(STUDY, SERIES, "1.2.3.4.1", b"data")
    # A later write to another study is not affected by what it remembered.
    assert spool.write("1.2.5", SERIES, "1.2.3.4.1", b"data").read_bytes() == b"data"
