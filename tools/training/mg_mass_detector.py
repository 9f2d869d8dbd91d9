"""Train the mammogram mass detector on synthetic mammograms and evaluate it held out (FROC).

Usage (from the repository root)::

    python -m tools.training.mg_mass_detector                 # train, evaluate, write weights
    python -m tools.training.mg_mass_detector --evaluate-only # metrics of the shipped weights

Seeded and CPU-only. Training mammograms come from
:func:`tools.synthetic.mammogram_pixels.make_mammogram_pixels` (seeds ``0..N-1``)
on random grids (0.4-0.6 mm pixels, 220-256 mm tall), both lateralities and views,
brought to the model grid by the plugin's own :func:`~plugins.mg_mass_detector.model.preprocess`.
A detection is a hit when its box centre lies inside a true mass's box (each mass
counts once, best score first). The operating threshold is chosen on a validation
set (seeds from :data:`VALIDATION_SEED`) as the lowest threshold with at most
:data:`TARGET_FP_PER_IMAGE` false positives per image; the held-out set (seeds from
:data:`HELD_OUT_SEED`, the DICOM wrapper's default 480 x 384 grid at 0.5 mm) gives
FROC points with MONAI's ``compute_froc_curve_data`` / ``compute_froc_score``.
Synthetic data only; a demonstration model, not for clinical use.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_froc_curve_data, compute_froc_score

from plugins.mg_mass_detector.model import (
    SCORE_THRESHOLD,
    WEIGHTS,
    ModelInput,
    build_network,
    centre_loss,
    decode,
    preprocess,
    targets,
)
from tools.synthetic.mammogram_pixels import make_mammogram_pixels
from tools.training import add_run_arguments, prepare_network, train_epochs

VALIDATION_SEED = 50_000
HELD_OUT_SEED = 100_000
TARGET_FP_PER_IMAGE = 0.25
#: FROC operating points (false positives per image).
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0)
#: Images of the held-out set that the tests re-score (the first ones).
TEST_SUBSET = 24
#: Every training grid fits this canvas (model pixels).
CANVAS = (136, 112)

Box = tuple[float, float, float, float]


@dataclass
class Tally:
    """Scores of true and false positive detections over a set of images."""

    tp: list[float] = field(default_factory=list)
    fp: list[float] = field(default_factory=list)
    targets: int = 0
    images: int = 0

    def add(self, detections: list[tuple[float, Box]], boxes: list[Box]) -> None:
        """Match one image's detections (best first) to its true boxes by centre-in-box."""
        self.images += 1
        self.targets += len(boxes)
        matched = [False] * len(boxes)
        for score, (x0, y0, x1, y1) in sorted(detections, key=lambda d: -d[0]):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            hit = next(
                (
                    i
                    for i, (bx0, by0, bx1, by1) in enumerate(boxes)
                    if not matched[i] and bx0 <= cx <= bx1 and by0 <= cy <= by1
                ),
                None,
            )
            if hit is None:
                self.fp.append(score)
            else:
                matched[hit] = True
                self.tp.append(score)

    def at(self, threshold: float) -> tuple[float, float]:
        """Sensitivity and false positives per image at ``threshold``."""
        tp = sum(1 for s in self.tp if s >= threshold)
        fp = sum(1 for s in self.fp if s >= threshold)
        return tp / max(self.targets, 1), fp / max(self.images, 1)

    def froc(self) -> tuple[float, dict[float, float]]:
        """MONAI's FROC score over :data:`FROC_RATES` and the sensitivity at each rate."""
        fps, sensitivity = compute_froc_curve_data(
            np.asarray(self.fp, dtype=float),
            np.asarray(self.tp, dtype=float),
            self.targets,
            self.images,
        )
        score = float(compute_froc_score(fps, sensitivity, FROC_RATES))
        points = np.interp(FROC_RATES, fps[::-1], sensitivity[::-1])
        return score, {rate: float(p) for rate, p in zip(FROC_RATES, points, strict=True)}


def random_grid(rng: np.random.Generator) -> dict[str, float | int]:
    spacing = float(rng.choice([0.4, 0.5, 0.6]))
    rows = round(float(rng.uniform(220.0, 256.0)) / spacing)
    return {"rows": rows, "columns": round(rows * 0.8), "pixel_spacing_mm": spacing}


def pad_to(tensor: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return F.pad(tensor, (0, shape[1] - tensor.shape[-1], 0, shape[0] - tensor.shape[-2]))


def make_training_set(
    count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, heat maps, log sizes and centre masks on :data:`CANVAS` for seeds ``0..count-1``."""
    rng = np.random.default_rng(seed)
    images, heats, sizes, masks = [], [], [], []
    for index in range(count):
        grid = random_grid(rng)
        pixels, truth = make_mammogram_pixels(index, **grid)  # type: ignore[arg-type]
        spacing = float(grid["pixel_spacing_mm"])
        model_input = preprocess(pixels, (spacing, spacing), truth.laterality)
        heat, size, mask = targets(truth.boxes, model_input)
        images.append(pad_to(model_input.image, CANVAS))
        heats.append(pad_to(heat, CANVAS))
        sizes.append(pad_to(size, CANVAS))
        masks.append(pad_to(mask, CANVAS))
    return torch.stack(images), torch.stack(heats), torch.stack(sizes), torch.stack(masks)


def train(
    network: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    checkpoint: Path | None = None,
) -> None:
    images, heats, sizes, masks = data

    def batch_loss(chosen: torch.Tensor, _rng: np.random.Generator) -> torch.Tensor:
        return centre_loss(network(images[chosen]), heats[chosen], sizes[chosen], masks[chosen])

    train_epochs(
        network,
        len(images),
        batch_loss,
        epochs=epochs,
        batch=batch,
        lr=lr,
        seed=seed,
        checkpoint=checkpoint,
    )


def detect(
    network: torch.nn.Module, model_input: ModelInput, threshold: float, limit: int
) -> list[tuple[float, Box]]:
    """The plugin's path for one preprocessed image."""
    with torch.inference_mode():
        output = network(model_input.image[None])[0]
    return decode(output, model_input, threshold, limit)


def evaluate_set(network: torch.nn.Module, first_seed: int, count: int) -> list[Tally]:
    """One :class:`Tally` per image (all peaks with score >= 0.01, at most 20)."""
    network.eval()
    tallies = []
    for seed in range(first_seed, first_seed + count):
        pixels, truth = make_mammogram_pixels(seed)
        spacing = truth.pixel_spacing_mm
        model_input = preprocess(pixels, (spacing, spacing), truth.laterality)
        tally = Tally()
        tally.add(detect(network, model_input, 0.01, 20), truth.boxes)
        tallies.append(tally)
    return tallies


def merge(tallies: list[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.tp += tally.tp
        total.fp += tally.fp
        total.targets += tally.targets
        total.images += tally.images
    return total


def operating_threshold(tally: Tally, target: float = TARGET_FP_PER_IMAGE) -> float:
    """The lowest threshold (2 decimals) with at most ``target`` false positives per image."""
    for threshold in np.arange(0.01, 1.0, 0.01):
        if tally.at(float(threshold))[1] <= target:
            return round(float(threshold), 2)
    return 0.99


def report(name: str, tally: Tally, threshold: float) -> str:
    score, points = tally.froc()
    sensitivity, fp_rate = tally.at(threshold)
    listed = ", ".join(f"{rate:g} FP/img: {value:.3f}" for rate, value in points.items())
    return (
        f"{name}: {tally.images} images, {tally.targets} masses; FROC score {score:.3f} "
        f"({listed}); threshold {threshold:.2f}: sensitivity {sensitivity:.3f} "
        f"at {fp_rate:.3f} FP/image"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.training.mg_mass_detector")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--validation", type=int, default=80)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=28)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    add_run_arguments(parser, weights=WEIGHTS, threads=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    network = prepare_network(build_network, args)
    started = time.perf_counter()
    if not args.evaluate_only:
        data = make_training_set(args.train_images, args.seed)
        print(f"{len(data[0])} training mammograms in {time.perf_counter() - started:.0f} s")
        train(
            network,
            data,
            epochs=args.epochs,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            checkpoint=args.output,
        )
        print(f"weights written to {args.output} after {time.perf_counter() - started:.0f} s")
    network.eval()
    validation = merge(evaluate_set(network, VALIDATION_SEED, args.validation))
    chosen = operating_threshold(validation)
    print(report("validation", validation, chosen))
    print(
        f"operating threshold on the validation set {chosen:.2f} "
        f"(SCORE_THRESHOLD {SCORE_THRESHOLD})"
    )
    threshold = SCORE_THRESHOLD if args.evaluate_only else chosen
    held_out = evaluate_set(network, HELD_OUT_SEED, args.held_out)
    print(report("held-out", merge(held_out), threshold))
    print(report(f"test subset (first {TEST_SUBSET})", merge(held_out[:TEST_SUBSET]), threshold))
    print(f"done after {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
