"""Train the ``ct_denoise`` demonstration network on synthetic phantoms and evaluate it.

Usage (from the repository root)::

    python -m tools.training.ct_denoise                 # train, evaluate, write the weights
    python -m tools.training.ct_denoise --evaluate-only # metrics of the shipped weights

Seeded and CPU-only. Noise-free phantoms come from
:func:`tools.synthetic.abdomen_ct.make_abdomen_ct` and
:func:`tools.synthetic.chest_ct.make_chest_ct` (``noise_sd_hu=0``); white Gaussian noise
of 5-30 HU is added to random 64x64 crops of their axial slices (the phantoms' own
noise is white Gaussian after the in-plane blur, so this is the same kind), and the
network learns to remove it. Held-out phantoms (seeds from 10000, other grids) get
10 and 20 HU noise; the report gives, with MONAI's metrics, PSNR and SSIM against the
noise-free image (HU -1000..1000 scaled to 0..1), the SD of the error in the body and
the SD inside the eroded liver, before and after. Synthetic data only; the result is
a demonstration model, not for clinical use.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from scipy import ndimage

from node.contract.assemble import assemble_volume
from plugins.ct_denoise.model import HU_SCALE, WEIGHTS, build_network, denoise_volume
from tools.synthetic.abdomen_ct import LIVER, make_abdomen_ct
from tools.synthetic.chest_ct import make_chest_ct
from tools.training import add_run_arguments, prepare_network

HELD_OUT_SEED = 10_000
#: Display range the quality metrics are computed on (HU), scaled to 0..1.
METRIC_RANGE = (-1000.0, 1000.0)
#: Noise SDs (HU) of the held-out evaluation.
HELD_OUT_NOISE = (10.0, 20.0)


def clean_slices(seed: int, kind: str, rows: int, n_slices: int, pixel: float) -> np.ndarray:
    """Noise-free HU slices ``(slices, rows, columns)`` of one phantom."""
    if kind == "abdomen":
        datasets, _ = make_abdomen_ct(
            n_slices=n_slices,
            rows=rows,
            columns=rows,
            pixel_spacing_mm=pixel,
            slice_thickness_mm=400.0 / n_slices,
            seed=seed,
            noise_sd_hu=0.0,
        )
    else:
        datasets, _ = make_chest_ct(
            n_slices=n_slices,
            rows=rows,
            columns=rows,
            pixel_spacing_mm=pixel,
            slice_thickness_mm=300.0 / n_slices,
            seed=seed,
            noise_sd_hu=0.0,
        )
    return assemble_volume(datasets).array


def training_slices(count: int, seed: int) -> np.ndarray:
    """Noise-free slices of ``count`` phantoms (3 abdomen to 1 chest), stacked."""
    rng = np.random.default_rng(seed)
    stacks = []
    for index in range(count):
        kind = "chest" if index % 4 == 3 else "abdomen"
        rows = int(rng.integers(96, 161))
        pixel = float(rng.uniform(380.0, 480.0)) / rows
        top = (rows - 96) // 2
        stacks.append(clean_slices(index, kind, rows, 24, pixel)[:, top : top + 96, top : top + 96])
    return np.concatenate(stacks)


def add_noise(hu: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise, rounded to whole HU as the phantoms store it."""
    return np.rint(hu + rng.normal(0.0, sd, size=hu.shape)).astype(np.float32)


def train(
    network: torch.nn.Module, slices: np.ndarray, *, iterations: int, batch: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=2e-3, total_steps=iterations, pct_start=0.1
    )
    crop = 64
    network.train()
    started = time.perf_counter()
    running = 0.0
    for step in range(1, iterations + 1):
        picks = rng.integers(len(slices), size=batch)
        tops = rng.integers(slices.shape[1] - crop + 1, size=batch)
        lefts = rng.integers(slices.shape[2] - crop + 1, size=batch)
        clean = np.stack(
            [
                slices[p, t : t + crop, c : c + crop]
                for p, t, c in zip(picks, tops, lefts, strict=True)
            ]
        )
        sds = rng.uniform(5.0, 30.0, size=(batch, 1, 1))
        noisy = clean + rng.normal(0.0, 1.0, size=clean.shape) * sds
        x = torch.from_numpy((noisy / HU_SCALE).astype(np.float32))[:, None]
        y = torch.from_numpy((clean / HU_SCALE).astype(np.float32))[:, None]
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(network(x), y)
        loss.backward()
        optimiser.step()
        schedule.step()
        value = float(loss.detach()) * HU_SCALE**2
        running = 0.9 * running + 0.1 * value if step > 1 else value
        if step % 50 == 0 or step == iterations:
            print(
                f"step {step:4d}/{iterations} mse {running:8.2f} HU^2 "
                f"elapsed {time.perf_counter() - started:5.0f} s",
                flush=True,
            )
    network.eval()


@dataclass
class Scores:
    psnr: list[float]
    ssim: list[float]
    error_sd: list[float]
    liver_sd: list[float]


def _scaled(hu: np.ndarray) -> torch.Tensor:
    low, high = METRIC_RANGE
    scaled = np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(scaled)[:, None]


def quality(
    image: np.ndarray, clean: np.ndarray, body: np.ndarray, liver: np.ndarray
) -> tuple[float, float, float, float]:
    """PSNR, SSIM (MONAI, per slice, averaged), error SD in the body, SD in the liver."""
    psnr = PSNRMetric(max_val=1.0)(_scaled(image), _scaled(clean))
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0)(_scaled(image), _scaled(clean))
    assert isinstance(psnr, torch.Tensor) and isinstance(ssim, torch.Tensor)
    error_sd = float(np.std((image - clean)[body]))
    liver_sd = float(np.std(image[liver]))
    return float(psnr.mean()), float(ssim.mean()), error_sd, liver_sd


def evaluate(network: torch.nn.Module, count: int) -> dict[tuple[str, float], Scores]:
    """Quality before (``noisy``) and after (``denoised``) on held-out abdomen phantoms."""
    results: dict[tuple[str, float], Scores] = {}
    rng = np.random.default_rng(HELD_OUT_SEED)
    for index in range(count):
        rows = (192, 256, 224)[index % 3]
        datasets, truth = make_abdomen_ct(
            n_slices=40,
            rows=rows,
            columns=rows,
            pixel_spacing_mm=420.0 / rows,
            slice_thickness_mm=10.0,
            seed=HELD_OUT_SEED + index,
            noise_sd_hu=0.0,
        )
        clean = assemble_volume(datasets).array
        labels = truth.labels
        keep = np.flatnonzero((labels == LIVER).reshape(len(labels), -1).sum(1) > 200)
        clean, labels = clean[keep], labels[keep]
        body = labels > 0
        liver = ndimage.binary_erosion(labels == LIVER, iterations=3)
        for sd in HELD_OUT_NOISE:
            noisy = add_noise(clean, sd, rng)
            denoised = denoise_volume(network, noisy, torch.device("cpu"))
            for name, image in (("noisy", noisy), ("denoised", denoised)):
                scores = results.setdefault((name, sd), Scores([], [], [], []))
                psnr, ssim, error_sd, liver_sd = quality(image, clean, body, liver)
                scores.psnr.append(psnr)
                scores.ssim.append(ssim)
                scores.error_sd.append(error_sd)
                scores.liver_sd.append(liver_sd)
                print(
                    f"held-out {index} {rows}x{rows}x{len(keep)} noise {sd:g} HU {name:8s}: "
                    f"PSNR {psnr:.2f} dB SSIM {ssim:.4f} error SD {error_sd:.2f} HU "
                    f"liver SD {liver_sd:.2f} HU",
                    flush=True,
                )
    return results


def table(results: dict[tuple[str, float], Scores]) -> str:
    lines = [
        "| noise SD (HU) | image | PSNR (dB) | SSIM | error SD in body (HU) | SD in liver (HU) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for (name, sd), s in sorted(
        results.items(), key=lambda item: (item[0][1], item[0][0] != "noisy")
    ):
        lines.append(
            f"| {sd:g} | {name} | {np.mean(s.psnr):.2f} | {np.mean(s.ssim):.4f} | "
            f"{np.mean(s.error_sd):.2f} | {np.mean(s.liver_sd):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.training.ct_denoise")
    parser.add_argument("--train-phantoms", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=16)
    add_run_arguments(parser, weights=WEIGHTS, threads=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    network = prepare_network(build_network, args)
    if not args.evaluate_only:
        started = time.perf_counter()
        slices = training_slices(args.train_phantoms, args.seed)
        print(f"{len(slices)} training slices in {time.perf_counter() - started:.0f} s", flush=True)
        train(network, slices, iterations=args.iterations, batch=args.batch, seed=args.seed)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), args.output)
        print(f"weights written to {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
        print(f"training took {time.perf_counter() - started:.0f} s")
    print(table(evaluate(network, args.held_out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
