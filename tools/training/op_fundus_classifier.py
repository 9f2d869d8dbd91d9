"""Train the fundus demonstration classifier on synthetic photographs and evaluate it held out.

Usage (from the repository root)::

    python -m tools.training.op_fundus_classifier                 # train, evaluate, write weights
    python -m tools.training.op_fundus_classifier --evaluate-only # metrics of the shipped weights

Seeded and CPU-only. Training photographs come from
:func:`tools.synthetic.fundus_pixels.make_fundus_pixels` with seeds ``0..N-1`` at
256 x 256; the operating threshold is chosen on a validation set (seeds from
:data:`VALIDATION_SEED`) as the highest threshold whose sensitivity is at least
:data:`TARGET_SENSITIVITY`; the held-out test set (seeds from :data:`HELD_OUT_SEED`) is
drawn at 512 x 512, the size the DICOM wrapper writes, and goes through the
plugin's preprocessing. Metrics use MONAI: ``ROCAUCMetric`` and the confusion-matrix
metrics. Synthetic data only; a demonstration model, not for clinical use.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import ROCAUCMetric, compute_confusion_matrix_metric, get_confusion_matrix

from plugins.op_fundus_classifier.model import (
    THRESHOLD,
    WEIGHTS,
    build_network,
    preprocess,
    probabilities,
)
from tools.synthetic.fundus_pixels import make_fundus_pixels
from tools.training import add_run_arguments, prepare_network, train_epochs

VALIDATION_SEED = 50_000
HELD_OUT_SEED = 100_000
#: The operating point aims at this sensitivity on the validation set (screening use).
TARGET_SENSITIVITY = 0.85
#: Images of the held-out set that the tests re-score (the first ones).
TEST_SUBSET = 24
TRAIN_SIZE = 384
HELD_OUT_SIZE = 512


@dataclass(frozen=True)
class Scores:
    """Probabilities and truth of one evaluation set."""

    probabilities: np.ndarray
    truth: np.ndarray
    severities: tuple[str, ...]


@dataclass(frozen=True)
class Metrics:
    """Classification metrics at one threshold."""

    count: int
    positives: int
    auc: float
    threshold: float
    sensitivity: float
    specificity: float


def make_images(seeds: range, size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``uint8`` photographs ``(n, size, size, 3)``, labels and severities for ``seeds``."""
    images = np.empty((len(seeds), size, size, 3), np.uint8)
    labels = np.empty(len(seeds), np.float32)
    severities = []
    for index, seed in enumerate(seeds):
        images[index], truth = make_fundus_pixels(seed, size)
        labels[index] = float(truth.lesions_present)
        severities.append(truth.severity)
    return images, labels, tuple(severities)


def score(network: torch.nn.Module, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Probabilities of the finding for ``images`` through the plugin's preprocessing."""
    network.eval()
    out = []
    for start in range(0, len(images), batch):
        tensor = torch.stack([preprocess(image) for image in images[start : start + batch]])
        out.append(probabilities(network, tensor).numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


def metrics(scores: Scores, threshold: float) -> Metrics:
    """AUC (MONAI ``ROCAUCMetric``) and sensitivity/specificity at ``threshold``."""
    auc_metric = ROCAUCMetric()
    auc_metric(
        torch.from_numpy(scores.probabilities[:, None]), torch.from_numpy(scores.truth[:, None])
    )
    aggregated = auc_metric.aggregate()
    auc = float(aggregated if isinstance(aggregated, float) else np.asarray(aggregated).item())
    predicted = torch.from_numpy((scores.probabilities >= threshold).astype(np.float32))[:, None]
    confusion = get_confusion_matrix(predicted, torch.from_numpy(scores.truth[:, None]))
    total = confusion.sum(dim=0, keepdim=True)
    sensitivity = float(compute_confusion_matrix_metric("sensitivity", total))
    specificity = float(compute_confusion_matrix_metric("specificity", total))
    return Metrics(
        len(scores.truth), int(scores.truth.sum()), auc, threshold, sensitivity, specificity
    )


def operating_threshold(scores: Scores, target: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold (2 decimals) whose sensitivity is at least ``target``."""
    positives = np.sort(scores.probabilities[scores.truth > 0.5])
    if len(positives) == 0:
        raise ValueError("the validation set has no positive image")
    allowed_misses = int(np.floor((1.0 - target) * len(positives)))
    return float(np.floor(positives[allowed_misses] * 100.0) / 100.0)


def train(
    network: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    checkpoint: Path | None = None,
) -> None:
    inputs = torch.stack([preprocess(image) for image in images])
    targets = torch.from_numpy(labels)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def batch_loss(chosen: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        x = inputs[chosen]
        if rng.random() < 0.5:
            x = x.flip(-1)  # the other eye
        if rng.random() < 0.5:
            x = x.flip(-2)
        return loss_fn(network(x)[:, 0], targets[chosen])

    train_epochs(
        network,
        len(inputs),
        batch_loss,
        epochs=epochs,
        batch=batch,
        lr=lr,
        seed=seed,
        checkpoint=checkpoint,
    )


def evaluate_set(network: torch.nn.Module, first_seed: int, count: int, size: int) -> Scores:
    images, labels, severities = make_images(range(first_seed, first_seed + count), size)
    return Scores(score(network, images), labels, severities)


def report(name: str, result: Metrics) -> str:
    return (
        f"{name}: n={result.count} ({result.positives} with lesions) AUC {result.auc:.3f}; "
        f"threshold {result.threshold:.2f}: sensitivity {result.sensitivity:.3f}, "
        f"specificity {result.specificity:.3f}"
    )


def sensitivity_by_severity(scores: Scores, threshold: float) -> dict[str, float]:
    found: dict[str, float] = {}
    severities = np.asarray(scores.severities)
    for severity in ("subtle", "mild", "moderate", "severe"):
        chosen = severities == severity
        if chosen.any():
            found[severity] = float((scores.probabilities[chosen] >= threshold).mean())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.training.op_fundus_classifier")
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    add_run_arguments(parser, weights=WEIGHTS, threads=2)
    parser.add_argument(
        "--cache", type=Path, default=None, help="keep the generated training images here"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    network = prepare_network(build_network, args)
    started = time.perf_counter()
    if not args.evaluate_only:
        cached = (
            args.cache / f"fundus_train_{args.train_images}_{TRAIN_SIZE}.npz"
            if args.cache
            else None
        )
        if cached is not None and cached.is_file():
            with np.load(cached) as stored:
                images, labels = stored["images"], stored["labels"]
        else:
            images, labels, _ = make_images(range(args.train_images), TRAIN_SIZE)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, images=images, labels=labels)
        print(f"{len(images)} training photographs in {time.perf_counter() - started:.0f} s")
        train(
            network,
            images,
            labels,
            epochs=args.epochs,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            checkpoint=args.output,
        )
        print(f"weights written to {args.output} after {time.perf_counter() - started:.0f} s")
    validation = evaluate_set(network, VALIDATION_SEED, args.validation, TRAIN_SIZE)
    chosen = operating_threshold(validation)
    print(report("validation", metrics(validation, chosen)))
    print(f"operating threshold on the validation set {chosen:.2f} (model.THRESHOLD {THRESHOLD})")
    threshold = THRESHOLD if args.evaluate_only else chosen
    held_out = evaluate_set(network, HELD_OUT_SEED, args.held_out, HELD_OUT_SIZE)
    print(report(f"held-out {HELD_OUT_SIZE}x{HELD_OUT_SIZE}", metrics(held_out, threshold)))
    print("held-out sensitivity by severity:", sensitivity_by_severity(held_out, threshold))
    subset = Scores(
        held_out.probabilities[:TEST_SUBSET],
        held_out.truth[:TEST_SUBSET],
        held_out.severities[:TEST_SUBSET],
    )
    print(report(f"test subset (first {TEST_SUBSET})", metrics(subset, threshold)))
    print(f"done after {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
