"""Radiomics time per segment on the ct_organs phantom: ``python -m benchmarks.radiomics``.

Runs pyradiomics (every class the template format offers) on each organ of the
abdomen phantom the ct_organs routine is tested on (its ground-truth label map, so no
model runs), and times the SR built with and without the features. Measures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from node.results import build_results, load_template
from node.results.template import default_template_dir
from node.runtime.plugin import Prediction
from node.runtime.volume import assemble_volume
from node.synthetic.abdomen_ct import make_abdomen_ct

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
    with tempfile.TemporaryDirectory() as work:
        with_features = load_template(_template(Path(work), labels))
        plain = load_template(_plain(Path(work)))
        started = time.perf_counter()
        results = build_results(volume, prediction, with_features, tags=["sr"])
        total = time.perf_counter() - started
        baseline_started = time.perf_counter()
        baseline = build_results(volume, prediction, plain, tags=["sr"])
        baseline_total = time.perf_counter() - baseline_started
    assert results.radiomics is not None
    voxels = {label: int(np.count_nonzero(truth.labels == label)) for label in labels}
    return {
        "grid": list(volume.shape),
        "spacing_mm": list(volume.spacing),
        "segments": [
            {
                "label": label,
                "segment": with_features.segment(label).label,
                "voxels": voxels[label],
                "features": len(results.radiomics.for_segment(label)),
                "seconds": round(results.radiomics.seconds.get(label, float("nan")), 3),
            }
            for label in labels
        ],
        "sr_seconds_with_features": round(results.seconds["sr"], 3),
        "sr_seconds_without": round(baseline.seconds["sr"], 3),
        "total_seconds": round(total, 3),
        "total_seconds_without": round(baseline_total, 3),
    }


def _plain(directory: Path) -> Path:
    plain = directory / "plain"
    plain.mkdir()
    return _template(plain, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", default="2,3,4,5", help="label values (1 body is slow)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    result = run([int(v) for v in args.labels.split(",")])
    print(f"Radiomics on the ct_organs phantom {result['grid']} voxels {result['spacing_mm']} mm")
    print(f"  {'segment':<10} {'voxels':>9} {'features':>8} {'seconds':>8}")
    for row in result["segments"]:
        print(f"  {row['segment']:<10} {row['voxels']:>9} {row['features']:>8} {row['seconds']:>8}")
    print(
        f"  SR build: {result['sr_seconds_with_features']} s with features, "
        f"{result['sr_seconds_without']} s without"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
