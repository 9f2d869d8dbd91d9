"""Result encoding: SEG + SR of 1, 10 and 100 labels on a 512x512x300 CT series.

Each case runs in its own Python process (so peak RSS is its own): a synthetic CT
series is written and read back as the worker does, a label map with ``labels``
ellipsoid blobs spread over the volume is built, and ``build_results`` (the worker's
call) builds the BINARY SEG and the TID 1500 SR; each object is then written to a file
by the worker's writer (``node.results.encode``, pydicom's bytes; a large SEG's Pixel
Data and per-frame items are made while the file is written). Reported per case:
seconds per object (build, write), the whole ``build_results`` call, peak memory as a
ratio to the label map's ``nbytes`` (tracemalloc peak of a second build, and the RSS
high-water mark above the RSS before the build) and file sizes. The LABELMAP SEG
(``labelmap_seg``, one 8/16-bit frame per slice) of the same map is then built and
written alone, timed and measured the same way.
Measures; asserts nothing.

Usage: ``python -m benchmarks --only encoding`` or ``python -m benchmarks.encoding``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from benchmarks.ct_series import write_ct_series

#: Label counts of the default cases.
LABEL_COUNTS = (1, 10, 100)

_HEADER = """format_version: 2
name: bench_encoding
description: Encoding benchmark with {count} segments.
algorithm:
  name: ainode-bench
  version: "1.0.0"
  family: {{value: "123110", scheme: DCM, meaning: Artificial Intelligence}}
  manufacturer: ainode
  device_uid: "2.25.178964397963338725602503499548545767336"
output:
  series_description: AI bench
  content_label: BENCH
procedure_reported: {{value: "24627-2", scheme: LN, meaning: CT Chest}}
measurements:
  - key: volume_cm3
    concept: {{value: "118565006", scheme: SCT, meaning: Volume}}
    unit: cm3
    compute: volume
  - key: mean_hu
    concept: {{value: "112031", scheme: DCM, meaning: Attenuation Coefficient}}
    derivation: {{value: "373098007", scheme: SCT, meaning: Mean}}
    unit: "[hnsf'U]"
    compute: mean
segments:
"""
_SEGMENT = """  - label_value: {value}
    label: Blob {value}
    tracking_id: blob-{value}
    category: {{value: "49755003", scheme: SCT, meaning: Morphologically Abnormal Structure}}
    type: {{value: "4147007", scheme: SCT, meaning: Mass}}
    colour: [{red}, {green}, 80]
"""


def write_template(directory: Path, count: int) -> Path:
    """A template with ``count`` segments (label values 1..count)."""
    text = _HEADER.format(count=count) + "".join(
        _SEGMENT.format(value=value, red=(value * 37) % 256, green=(value * 91) % 256)
        for value in range(1, count + 1)
    )
    path = directory / "bench_encoding.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def blob_label_map(shape: tuple[int, int, int], count: int) -> np.ndarray:
    """``uint8``/``uint16`` label map with ``count`` ellipsoids on a grid over the volume.

    The grid has about ``count ** (1/3)`` cells per axis (more along the slices); each
    blob fills 80 % of its cell, so the labels cover every part of the volume.
    """
    per_axis = max(1, round(count ** (1 / 3)))
    grid = [per_axis, per_axis, math.ceil(count / per_axis**2)]
    dtype = np.uint8 if count < 256 else np.uint16
    label_map = np.zeros(shape, dtype=dtype)
    cells = [size / cells for size, cells in zip(shape, (grid[2], grid[0], grid[1]), strict=True)]
    for index in range(count):
        cz, cy, cx = index // (grid[0] * grid[1]), (index // grid[1]) % grid[0], index % grid[1]
        centre = [(c + 0.5) * size for c, size in zip((cz, cy, cx), cells, strict=True)]
        radius = [0.4 * size for size in cells]
        lo = [max(0, int(c - r)) for c, r in zip(centre, radius, strict=True)]
        hi = [min(n, math.ceil(c + r) + 1) for c, r, n in zip(centre, radius, shape, strict=True)]
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = (
            ((z - centre[0]) / radius[0]) ** 2
            + ((y - centre[1]) / radius[1]) ** 2
            + ((x - centre[2]) / radius[2]) ** 2
        ) <= 1.0
        region = label_map[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        region[inside] = index + 1
    return label_map


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _write(dataset: Any, path: Path) -> int:
    """Write ``dataset`` to ``path`` with the worker's writer; returns its bytes."""
    from node.results.encode import write_file

    with path.open("wb") as handle:
        return write_file(dataset, handle)


def run_case(workdir: Path, labels: int, slices: int, rows: int) -> dict[str, Any]:
    """Build and write SEG + SR of one label count; called in a process of its own."""
    from node.contract.assemble import assemble_volume
    from node.contract.plugin import Prediction
    from node.results import build_results, load_template

    _, paths = write_ct_series(workdir / "ct", slices, rows=rows, columns=rows)
    volume = assemble_volume(pydicom.dcmread(path) for path in paths)
    label_map = blob_label_map(volume.shape, labels)
    prediction = Prediction(label_map=label_map)
    template = load_template(write_template(workdir, labels))
    # Warm up on 4 slices: highdicom loads its standard tables once per process, as a
    # long-running worker does before its first job; that is not per-object work.
    # Most blobs miss those slices: their "measurement left out" warnings are not news.
    small = assemble_volume(pydicom.dcmread(path) for path in paths[:4])
    analysis_log = logging.getLogger("node.results.analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        warm = build_results(
            small, Prediction(label_map=label_map[:4]), template, tags=["seg", "sr"]
        )
    finally:
        analysis_log.setLevel(level)
    for _, dataset in warm.tagged():
        _write(dataset, workdir / "object.dcm")
    del warm, small
    gc.collect()
    # Peak RSS from here: writing 5 to clear_refs resets the high-water mark (Linux).
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _rss_kib("VmRSS")
    started = time.perf_counter()
    results = build_results(volume, prediction, template, tags=["seg", "sr"])
    build_s = time.perf_counter() - started
    objects: dict[str, Any] = {}
    for tag, dataset in results.tagged():
        write_started = time.perf_counter()
        written = _write(dataset, workdir / "object.dcm")  # the worker's writer
        objects[tag] = {
            "build_s": round(results.seconds[tag], 3),
            "write_s": round(time.perf_counter() - write_started, 3),
            "bytes": written,
        }
    total_s = time.perf_counter() - started
    rss_peak = _rss_kib("VmHWM")
    frames = int(results.seg.NumberOfFrames)
    del results
    gc.collect()
    labelmap = _labelmap_case(volume, prediction, template)
    statistics = _statistics_case(volume, label_map, labels)
    # A second build under tracemalloc (slower, so not timed): Python + numpy peak.
    tracemalloc.start()
    again = build_results(volume, prediction, template, tags=["seg", "sr"])
    for _, dataset in again.tagged():
        _write(dataset, workdir / "object.dcm")
    del again
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (workdir / "object.dcm").unlink(missing_ok=True)
    nbytes = label_map.nbytes
    return {
        "labels": labels,
        "shape": list(volume.shape),
        "label_map_bytes": nbytes,
        "seg_frames": frames,
        "objects": objects,
        "build_results_s": round(build_s, 3),
        "build_and_write_s": round(total_s, 3),
        "tracemalloc_peak_ratio": round(traced_peak / nbytes, 3),
        "rss_peak_ratio": round(max(0, rss_peak - rss_before) * 1024 / nbytes, 3),
        "labelmap_seg": labelmap,
        "label_statistics": statistics,
    }


def _statistics_case(volume: Any, label_map: np.ndarray, labels: int) -> dict[str, Any]:
    """``label_statistics`` (a model routine's measurements, node/engine/measure.py)
    against measuring every label over the whole volume, as it did before round 9."""
    from node.engine.measure import label_statistics

    wanted = list(range(1, labels + 1))
    # Untimed: the first large mask, gather and float64 temporaries of the process fault
    # their pages in (glibc then keeps such blocks), which would count against one side.
    first = volume.array[label_map == 1]
    _ = (first.mean(dtype=np.float64), first.std(dtype=np.float64))
    del first
    started = time.perf_counter()
    label_statistics(volume, label_map, wanted)
    node_s = time.perf_counter() - started
    started = time.perf_counter()
    for label in wanted:
        values = volume.array[label_map == label]
        _ = (values.mean(dtype=np.float64), values.std(dtype=np.float64))
    whole_s = time.perf_counter() - started
    return {"node_s": round(node_s, 3), "whole_volume_s": round(whole_s, 3)}


def _labelmap_case(volume: Any, prediction: Any, template: Any) -> dict[str, Any]:
    """The LABELMAP SEG alone: build_results and write seconds, bytes, RSS peak ratio."""
    from node.results import build_results

    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _rss_kib("VmRSS")
    started = time.perf_counter()
    results = build_results(volume, prediction, template, tags=["labelmap_seg"])
    build_s = time.perf_counter() - started
    (dataset,) = results.objects["labelmap_seg"]
    written = _write(dataset, Path("/dev/null"))  # the worker's writer
    total_s = time.perf_counter() - started
    rss_peak = _rss_kib("VmHWM")
    nbytes = np.asarray(prediction.label_map).nbytes
    return {
        "build_results_s": round(build_s, 3),
        "seg_build_s": round(results.seconds["labelmap_seg"], 3),
        "build_and_write_s": round(total_s, 3),
        "bytes": written,
        "frames": int(dataset.NumberOfFrames),
        "rss_peak_ratio": round(max(0, rss_peak - rss_before) * 1024 / nbytes, 3),
    }


def run_encoding(
    workdir: Path, *, labels: tuple[int, ...] = LABEL_COUNTS, slices: int = 300, rows: int = 512
) -> dict[str, Any]:
    """Every case in a fresh process (``python -m benchmarks.encoding --case``)."""
    cases = []
    for count in labels:
        case_dir = workdir / f"labels-{count}"
        case_dir.mkdir(parents=True, exist_ok=True)
        out = case_dir / "case.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.encoding",
                "--case",
                str(count),
                "--slices",
                str(slices),
                "--rows",
                str(rows),
                "--workdir",
                str(case_dir),
                "--out",
                str(out),
            ],
            check=True,
        )
        cases.append(json.loads(out.read_text()))
    return {"slices": slices, "rows": rows, "columns": rows, "cases": cases}


def encoding_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Encoding: SEG (BINARY) + SR of a {result['slices']}x{result['rows']}x"
        f"{result['columns']} label map through build_results, written to a file",
        f"  {'labels':>6} {'SEG build':>9} {'write':>6} {'SR build':>8} {'write':>6} "
        f"{'total s':>7} {'SEG MiB':>7} {'SR KiB':>7} {'frames':>6} {'mem/map':>7} {'rss/map':>7}",
    ]
    for case in result["cases"]:
        seg, sr = case["objects"]["seg"], case["objects"]["sr"]
        lines.append(
            f"  {case['labels']:>6} {seg['build_s']:>9.2f} {seg['write_s']:>6.2f} "
            f"{sr['build_s']:>8.2f} {sr['write_s']:>6.2f} {case['build_and_write_s']:>7.2f} "
            f"{seg['bytes'] / 2**20:>7.1f} {sr['bytes'] / 2**10:>7.0f} {case['seg_frames']:>6} "
            f"{case['tracemalloc_peak_ratio']:>7.2f} {case['rss_peak_ratio']:>7.2f}"
        )
    lines.append(
        "  total = build_results (analysis, SEG, SR) + writing both; mem/map = tracemalloc "
        "peak, rss/map = RSS high-water above the RSS before, over the label map's nbytes"
    )
    measured = [case for case in result["cases"] if "label_statistics" in case]
    if measured:
        lines.append("  label_statistics (a model routine's measurements), seconds")
        lines.append(f"  {'labels':>6} {'node':>7} {'whole volume, label by label':>29}")
        for case in measured:
            statistics = case["label_statistics"]
            lines.append(
                f"  {case['labels']:>6} {statistics['node_s']:>7.2f} "
                f"{statistics['whole_volume_s']:>29.2f}"
            )
    labelmaps = [case for case in result["cases"] if "labelmap_seg" in case]
    if labelmaps:
        lines.append("  LABELMAP SEG alone (build_results with tags=[labelmap_seg], then written)")
        lines.append(
            f"  {'labels':>6} {'SEG build':>9} {'total s':>7} {'SEG MiB':>7} {'frames':>6} "
            f"{'rss/map':>7}"
        )
        for case in labelmaps:
            labelmap = case["labelmap_seg"]
            lines.append(
                f"  {case['labels']:>6} {labelmap['seg_build_s']:>9.2f} "
                f"{labelmap['build_and_write_s']:>7.2f} {labelmap['bytes'] / 2**20:>7.1f} "
                f"{labelmap['frames']:>6} {labelmap['rss_peak_ratio']:>7.2f}"
            )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Seconds per object and peak memory ratio against the label count (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    labels = [str(case["labels"]) for case in cases]
    positions = np.arange(len(cases))
    figure, (seconds_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    bottom = np.zeros(len(cases))
    for tag, step in (("seg", "build"), ("seg", "write"), ("sr", "build"), ("sr", "write")):
        values = np.array([case["objects"][tag][f"{step}_s"] for case in cases])
        seconds_axis.bar(positions, values, bottom=bottom, label=f"{tag.upper()} {step}")
        bottom += values
    seconds_axis.set_xticks(positions, labels)
    seconds_axis.set_xlabel("labels")
    seconds_axis.set_ylabel("seconds")
    seconds_axis.set_title(f"SEG + SR, {result['slices']}x{result['rows']}x{result['columns']}")
    seconds_axis.legend()
    width = 0.35
    memory_axis.bar(
        positions - width / 2,
        [case["tracemalloc_peak_ratio"] for case in cases],
        width,
        label="tracemalloc peak",
    )
    memory_axis.bar(
        positions + width / 2,
        [case["rss_peak_ratio"] for case in cases],
        width,
        label="RSS high-water",
    )
    memory_axis.axhline(2.0, color="grey", linestyle="--", label="target 2x")
    memory_axis.set_xticks(positions, labels)
    memory_axis.set_xlabel("labels")
    memory_axis.set_ylabel("peak memory / label map bytes")
    memory_axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=int, help="run one label count in this process")
    parser.add_argument("--labels", default="1,10,100", help="label counts (all cases)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512, help="rows = columns")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--png", type=Path, help="draw the plot here (all cases)")
    args = parser.parse_args(argv)
    if args.case is not None:
        result = run_case(args.workdir, args.case, args.slices, args.rows)
    else:
        counts = tuple(int(v) for v in args.labels.split(","))
        result = run_encoding(args.workdir, labels=counts, slices=args.slices, rows=args.rows)
        print("\n".join(encoding_table(result)))
        if args.png:
            plot(result, args.png)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
