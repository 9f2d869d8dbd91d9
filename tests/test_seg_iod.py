"""highdicom's IOD lookup is cached: one walk of the standard's tables per question."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from highdicom import _standard_utils
from pydicom.uid import CTImageStorage, SegmentationStorage

from benchmarks.encoding import blob_label_map
from node.results.seg import frames, iod
from tests.test_seg_frames import _build_both, _volume


@pytest.mark.parametrize(
    ("attribute", "sop_class", "exclude"),
    [
        ("PerFrameFunctionalGroupsSequence", CTImageStorage, None),
        ("PerFrameFunctionalGroupsSequence", SegmentationStorage, None),
        ("PixelData", CTImageStorage, ["IconImageSequence"]),
        ("ContentDate", SegmentationStorage, None),
        ("NoSuchKeyword", CTImageStorage, None),
    ],
)
def test_cached_lookup_answers_as_highdicoms(
    attribute: str, sop_class: str, exclude: list[str] | None
) -> None:
    original = iod._ORIGINAL(attribute, sop_class, exclude)
    assert iod.is_attribute_in_iod(attribute, sop_class, exclude) is original
    assert iod.is_attribute_in_iod(attribute, sop_class, exclude) is original  # from the cache


def test_unknown_sop_class_still_raises() -> None:
    with pytest.raises(KeyError, match="No IOD found"):
        iod.is_attribute_in_iod("PixelData", "1.2.3.4.5")


def test_seg_build_walks_the_tables_once_per_question(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert frames.iod is iod  # importing the SEG builder installs the cache
    assert _standard_utils.is_attribute_in_iod is iod.is_attribute_in_iod
    walks: list[tuple[str, str]] = []
    original = iod._ORIGINAL

    def counting(attribute: str, sop_class_uid: str, exclude: list[str] | None = None) -> bool:
        walks.append((attribute, sop_class_uid))
        return original(attribute, sop_class_uid, exclude)

    monkeypatch.setattr(iod, "_ORIGINAL", counting)
    iod._cached.cache_clear()
    volume = _volume(tmp_path, slices=24, size=16)
    label_map = blob_label_map(volume.shape, 3)
    fast, reference = _build_both(tmp_path, volume, 3, label_map)
    iod._cached.cache_clear()
    # highdicom asks whether each of the 24 sources is multi-frame (twice: the fast path's
    # probe and the reference): without the cache, 48+ walks.
    assert len(walks) == len(set(walks)) < 10, walks
    assert int(fast.NumberOfFrames) == int(reference.NumberOfFrames) == 72


def test_highdicoms_lookup_is_the_function_the_cache_replaces() -> None:
    """A new highdicom that renames or moves the lookup fails here (node/results/seg/iod.py)."""
    import inspect

    assert list(inspect.signature(iod._ORIGINAL).parameters) == [
        "attribute",
        "sop_class_uid",
        "exclude_path_elements",
    ]
    # is_multiframe_image finds the lookup through its module's globals: the installed one.
    assert _standard_utils.is_multiframe_image.__globals__ is vars(_standard_utils)
    assert "is_attribute_in_iod" in _standard_utils.is_multiframe_image.__code__.co_names


def test_warm_loads_the_standards_tables_the_first_result_would_wait_for() -> None:
    """The node warms at start (node/app.py) what the first SEG would otherwise load."""
    code = (
        "from highdicom import _standard_utils as s\n"
        "from node.results.seg.iod import warm\n"
        "assert s.get_module_attribute_map.cache_info().currsize == 0\n"
        "warm()\n"
        "print(s.get_module_attribute_map.cache_info().currsize)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
