"""Radiomics time per segment on the ct_organs phantom: ``python -m benchmarks.radiomics``.

Runs pyradiomics (every class the template format offers) on each segment of the
abdomen phantom the ct_organs routine is tested on (its ground-truth label map, so no
model runs), one segment at a time (wall and CPU seconds), and times the SR built with
the features of every segment in ``--labels`` and without any. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.contract.template import default_template_dir
from node.results import build_results, load_template
from node.results.analysis import segment_numbers_map
from node.results.radiomics import compute_radiomics
from tools.synthetic.abdomen_ct import make_abdomen_ct

CLASSES = "[firstorder, shape, glcm, glrlm, glszm, gldm, ngtdm]"


def _template(directory: Path, labels: list[int]) -> Path:
    """ct_organs.yaml with every radiomics class on ``labels`` (format version 2)."""
    text = (default_template_dir() / "ct_organs.yaml").read_text()
    text = text.replace("format_version: 1", "format_version: 2", 1)
    for label in labels:
        anchor = f"  - label_value: {label}\n"
        head, _, tail = text.partition(anchor)
        end = tail.index("\n", tail.index("    colour:")) + 1
        text = f"{head}{anchor}{tail[:end]}    radiomics: {CLASSES}\n{tail[end:]}"
    path = directory / "ct_organs.yaml"
    path.write_text(text)
    return path


def run(labels: list[int]) -> dict[str, Any]:
    datasets, truth = make_abdomen_ct(
        n_slices=90,
        rows=192,
        columns=192,
        pixel_spacing_mm=2.2,
        slice_thickness_mm=4.0,
        seed=20_001,
    )
    volume = assemble_volume(datasets)
    prediction = Prediction(label_map=truth.labels)
    segments = []
    with tempfile.TemporaryDirectory() as work:
        for label in labels:
            directory = Path(work) / f"label-{label}"
            directory.mkdir()
            template = load_template(_template(directory, [label]))
            numbers = segment_numbers_map(prediction, volume, template)
            wall, cpu = time.perf_counter(), time.process_time()
            result = compute_radiomics(volume, numbers, template)
            segments.append(
                {
                    "label": label,
                    "segment": template.segment(label).label,
                    "voxels": int(np.count_nonzero(truth.labels == label)),
                    "features": len(result.for_segment(label)),
                    "seconds": round(time.perf_counter() - wall, 3),
                    "cpu_seconds": round(time.process_time() - cpu, 3),
                }
            )
        with_features = load_template(_template(Path(work), labels))
        plain = load_template(_plain(Path(work)))
        results = build_results(volume, prediction, with_features, tags=["sr"])
        baseline = build_results(volume, prediction, plain, tags=["sr"])
    return {
        "grid": list(volume.shape),
        "spacing_mm": list(volume.spacing),
        "segments": segments,
        "sr_seconds_with_features": round(results.seconds["sr"], 3),
        "sr_seconds_without": round(baseline.seconds["sr"], 3),
    }


def _plain(directory: Path) -> Path:
    plain = directory / "plain"
    plain.mkdir()
    return _template(plain, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", default="1,2,3,4,5", help="label values (1: the body)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    result = run([int(v) for v in args.labels.split(",")])
    print(f"Radiomics on the ct_organs phantom {result['grid']} voxels {result['spacing_mm']} mm")
    print(f"  {'segment':<10} {'voxels':>9} {'features':>8} {'wall s':>8} {'CPU s':>8}")
    for row in result["segments"]:
        print(
            f"  {row['segment']:<10} {row['voxels']:>9} {row['features']:>8} "
            f"{row['seconds']:>8} {row['cpu_seconds']:>8}"
        )
    print(
        f"  SR build: {result['sr_seconds_with_features']} s with features, "
        f"{result['sr_seconds_without']} s without"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
