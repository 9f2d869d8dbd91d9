"""Train the ``ct_organs`` demonstration UNet on synthetic phantoms and report held-out Dice.

Usage (from the repository root)::

    python -m tools.training.ct_organs                 # train, evaluate, write the weights
    python -m tools.training.ct_organs --evaluate-only # Dice of the shipped weights

Seeded and CPU-only: phantoms from :func:`tools.synthetic.abdomen_ct.make_abdomen_ct`
(seeds 0..N-1 for training, 10000+ for the held-out set), each brought to the model
grid with the node's own preprocessing (:func:`node.engine.inference.preprocess`), so
training sees exactly what inference sees. Held-out Dice is computed on the
**source** grid through :func:`node.engine.inference.segment`, the path the plugin runs.
Synthetic data only; the result is a demonstration model, not for clinical use.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from node.contract.assemble import assemble_volume
from node.contract.geometry import reorientation
from node.engine.inference import ExecutionOptions, dice, preprocess, resample_to_model, segment
from node.engine.postprocess import keep_largest_components
from plugins.ct_organs.model import BODY, COMPONENTS, LABELS, SPEC, WEIGHTS, build_network
from tools.synthetic.abdomen_ct import LABEL_NAMES, make_abdomen_ct
from tools.training import add_run_arguments, prepare_network

log = logging.getLogger(__name__)

HELD_OUT_SEED = 10_000
#: Held-out grids: (slices, rows = columns, pixel spacing, slice spacing) — clinical-like.
HELD_OUT_GRIDS = (
    (190, 320, 1.3, 2.0),
    (150, 256, 1.6, 2.5),
    (130, 384, 1.1, 3.0),
    (80, 224, 1.9, 5.0),
    (240, 288, 1.45, 1.6),
    (100, 256, 1.7, 4.0),
)


@dataclass
class Case:
    image: torch.Tensor  # (1, a, b, c) float32 at model spacing
    labels: torch.Tensor  # (a, b, c) int64


def random_grid(rng: np.random.Generator) -> dict[str, float | int]:
    """A random acquisition: field of view 380-480 mm, 2-5 mm slices over 300-440 mm."""
    rows = int(rng.integers(128, 321))
    pixel = float(rng.uniform(380.0, 480.0)) / rows
    slice_mm = float(rng.uniform(2.0, 5.0))
    n_slices = int(float(rng.uniform(300.0, 440.0)) / slice_mm)
    return {
        "n_slices": n_slices,
        "rows": rows,
        "columns": rows,
        "pixel_spacing_mm": round(pixel, 3),
        "slice_thickness_mm": round(slice_mm, 3),
    }


def make_case(seed: int, grid: dict[str, float | int]) -> Case:
    """One phantom on the model grid, preprocessed as the engine does at inference."""
    datasets, truth = make_abdomen_ct(seed=seed, **grid)  # type: ignore[arg-type]
    volume = assemble_volume(datasets)
    orient = reorientation(volume.affine, SPEC.axcodes)
    spacing = orient.model_spacing(volume.spacing)
    hu = orient.to_model(torch.from_numpy(volume.array))
    image = preprocess(hu, spacing, SPEC)[0]
    truth_model = orient.to_model(torch.from_numpy(truth.labels.astype(np.int64)))
    one_hot = F.one_hot(truth_model, len(LABELS)).permute(3, 0, 1, 2)[None].float()
    labels = resample_to_model(one_hot[0], spacing, SPEC.spacing_mm)
    return Case(image=image, labels=labels.argmax(0))


#: How often a crop is centred on each organ (lungs, liver, spleen, kidneys): the thin
#: spleen crescent and the kidneys are the hardest, so they are sampled most.
ORGAN_WEIGHTS = {2: 0.15, 3: 0.25, 4: 0.3, 5: 0.3}


def random_crop(
    case: Case, size: int, rng: np.random.Generator, organ_bias: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size``³ crop, padded with air; centred on an organ voxel with ``organ_bias``."""
    image, labels = case.image, case.labels
    pad = [max(0, size - s) for s in labels.shape]
    if any(pad):
        spec = [x for p in reversed(pad) for x in (p // 2, p - p // 2)]
        image = F.pad(image, spec, value=0.0)
        labels = F.pad(labels, spec, value=0)
    if rng.random() < organ_bias:
        organ = int(rng.choice(list(ORGAN_WEIGHTS), p=list(ORGAN_WEIGHTS.values())))
        where = torch.nonzero(labels == organ)
        centre = where[int(rng.integers(len(where)))].tolist() if len(where) else None
    else:
        centre = None
    if centre is None:
        centre = [int(rng.integers(s)) for s in labels.shape]
    starts = [
        int(min(max(c - size // 2 + int(rng.integers(-8, 9)), 0), s - size))
        for c, s in zip(centre, labels.shape, strict=True)
    ]
    window = tuple(slice(st, st + size) for st in starts)
    return image[(slice(None), *window)], labels[window]


def train(
    network: torch.nn.Module,
    cases: list[Case],
    *,
    iterations: int,
    batch: int,
    crop: int,
    lr: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=iterations, pct_start=0.1
    )
    network.train()
    started = time.perf_counter()
    running = 0.0
    for step in range(1, iterations + 1):
        pairs = [random_crop(cases[int(rng.integers(len(cases)))], crop, rng) for _ in range(batch)]
        images = torch.stack([p[0] for p in pairs])
        targets = torch.stack([p[1] for p in pairs])[:, None]
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(network(images), targets)
        loss.backward()
        optimiser.step()
        schedule.step()
        value = float(loss.detach())
        running = 0.9 * running + 0.1 * value if step > 1 else value
        if step % 25 == 0 or step == iterations:
            print(
                f"step {step:4d}/{iterations} loss {running:.4f} "
                f"elapsed {time.perf_counter() - started:6.0f} s",
                flush=True,
            )
    network.eval()


def evaluate(network: torch.nn.Module, count: int) -> dict[int, list[float]]:
    """Dice per organ on held-out phantoms, on their source grids, after the plugin's clean-up."""
    scores: dict[int, list[float]] = {label: [] for label in LABEL_NAMES}
    for index in range(count):
        n_slices, rows, pixel, slice_mm = HELD_OUT_GRIDS[index % len(HELD_OUT_GRIDS)]
        datasets, truth = make_abdomen_ct(
            n_slices=n_slices,
            rows=rows,
            columns=rows,
            pixel_spacing_mm=pixel,
            slice_thickness_mm=slice_mm,
            seed=HELD_OUT_SEED + index,
            flip_left_right=index % 3 == 2,
        )
        volume = assemble_volume(datasets)
        result = segment(
            network,
            volume.array,
            volume.affine,
            volume.spacing,
            SPEC,
            torch.device("cpu"),
            ExecutionOptions(),
        )
        labels = keep_largest_components(result.labels, COMPONENTS, fill=BODY)  # as the plugin
        row = []
        for label in LABEL_NAMES:
            value = dice(labels, truth.labels, label)
            scores[label].append(value)
            row.append(f"{LABEL_NAMES[label]} {value:.3f}")
        print(
            f"held-out {index} {rows}x{rows}x{n_slices} @ {pixel}/{slice_mm} mm: " + ", ".join(row)
        )
    return scores


def dice_table(scores: dict[int, list[float]]) -> str:
    lines = ["| label | structure | mean Dice | min Dice |", "|---:|---|---:|---:|"]
    for label, values in scores.items():
        lines.append(
            f"| {label} | {LABEL_NAMES[label]} | {np.mean(values):.3f} | {np.min(values):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.training.ct_organs")
    parser.add_argument("--train-cases", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    add_run_arguments(
        parser,
        weights=WEIGHTS,
        threads=0,
        threads_help="torch threads (0: default)",
        fine_tuning=True,
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    network = prepare_network(build_network, args)
    if not args.evaluate_only:
        started = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        cases = [make_case(seed, random_grid(rng)) for seed in range(args.train_cases)]
        print(
            f"{len(cases)} training phantoms in {time.perf_counter() - started:.0f} s", flush=True
        )
        train(
            network,
            cases,
            iterations=args.iterations,
            batch=args.batch,
            crop=args.crop,
            lr=args.lr,
            seed=args.seed,
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), args.output)
        print(f"weights written to {args.output} after {time.perf_counter() - started:.0f} s")
    scores = evaluate(network, args.held_out)
    print(dice_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
