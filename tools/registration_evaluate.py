"""Target registration error of ``rigid_registration`` on synthetic prior/current pairs.

Each case is the chest phantom of one seed (the current CT) and a prior of the same
phantom made by :func:`tools.synthetic.prior_ct.make_prior_ct` with a known rigid
transform, on another grid and in another Frame of Reference. The error is measured
at the lung centres, the carina and the 8 corners of a 240 x 160 x 220 mm box around
the chest. Run: ``python -m tools.registration_evaluate [--full-size]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from node.contract.assemble import assemble_volume
from plugins.rigid_registration.rigid import register_rigid
from tools.synthetic.chest_ct import make_chest_ct
from tools.synthetic.prior_ct import PriorTruth, make_prior_ct

#: (seed, rotation about x, y, z in degrees, translation in mm).
CASES: tuple[tuple[int, tuple[float, float, float], tuple[float, float, float]], ...] = (
    (21, (3.0, -2.0, 4.0), (12.0, -18.0, 30.0)),
    (22, (-5.0, 3.0, -2.0), (-25.0, 10.0, -45.0)),
    (23, (2.0, 6.0, 8.0), (30.0, 25.0, 60.0)),
    (24, (-8.0, -4.0, 5.0), (-10.0, -30.0, -70.0)),
    (25, (0.0, 0.0, 10.0), (40.0, 0.0, 15.0)),
)


def points(truth: PriorTruth) -> np.ndarray:
    """Landmarks in current patient coordinates (mm)."""
    anatomy = truth.anatomy
    found = [
        anatomy.right_lung.center_mm,
        anatomy.left_lung.center_mm,
        (*anatomy.trachea_center_xy_mm, anatomy.carina_z_mm),
    ]
    found += [
        (120.0 * sx, 80.0 * sy - 10.0, 110.0 * sz)
        for sx in (-1, 1)
        for sy in (-1, 1)
        for sz in (-1, 1)
    ]
    return np.asarray(found, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full-size", action="store_true", help="256x256 at 1.5 mm, 300x300 at 1.3 mm"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    current_grid = (
        {"rows": 256, "columns": 256, "pixel_spacing_mm": 1.5}
        if args.full_size
        else {"rows": 160, "columns": 160, "pixel_spacing_mm": 2.4}
    )
    prior_grid = (
        {"rows": 300, "columns": 300, "pixel_spacing_mm": 1.3}
        if args.full_size
        else {"rows": 200, "columns": 200, "pixel_spacing_mm": 2.0}
    )
    print(
        "seed  rotation_deg        translation_mm        TRE mean  TRE max  initial  cpu_s  wall_s"
    )
    for seed, rotation, translation in CASES:
        current, _ = make_chest_ct(n_slices=100, seed=seed, **current_grid)  # type: ignore[arg-type]
        prior, truth = make_prior_ct(
            seed=seed,
            rotation_deg=rotation,
            translation_mm=translation,
            **prior_grid,  # type: ignore[arg-type]
        )
        wall, cpu = time.perf_counter(), time.process_time()
        result = register_rigid(
            assemble_volume(current), assemble_volume(prior), threads=args.threads
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        landmarks = points(truth)
        in_prior = truth.to_prior(landmarks)
        mapped = in_prior @ result.matrix[:3, :3].T + result.matrix[:3, 3]
        errors = np.linalg.norm(mapped - landmarks, axis=1)
        initial = np.linalg.norm(in_prior - landmarks, axis=1)
        print(
            f"{seed:4d}  {rotation!s:18s}  {translation!s:20s}  {errors.mean():7.2f}  "
            f"{errors.max():7.2f}  {initial.max():7.1f}  {cpu:5.1f}  {wall:6.1f}"
        )


if __name__ == "__main__":
    main()
