"""Shared pieces of the demonstration models' training scripts (``tools/training/<routine>.py``,
run as ``python -m tools.training.<routine>``).

Each script keeps its own data, loss and evaluation; what they share is here: the
flags every script has (:func:`add_run_arguments`), seeding and building the network
(with ``--evaluate-only``: the shipped weights, :func:`prepare_network`) and, for the
epoch-based 2D models, the AdamW + one-cycle training loop (:func:`train_epochs`).
Draws from the seeded generators happen in the same order as when each script had
its own copy, so documented runs reproduce.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from node.engine.weights import load_state

#: The loss of one batch: the chosen sample indices and the run's generator.
BatchLoss = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    weights: Path,
    threads: int,
    threads_help: str | None = None,
    fine_tuning: bool = False,
) -> None:
    """``--seed`` (0), ``--threads``, ``--output`` (``weights``) and ``--evaluate-only``;
    with ``fine_tuning`` also ``--init`` (weights to start training from)."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)
    parser.add_argument("--output", type=Path, default=weights)
    if fine_tuning:
        parser.add_argument(
            "--init", type=Path, default=None, help="start from these weights (fine-tuning)"
        )
    parser.add_argument("--evaluate-only", action="store_true")


def prepare_network(
    build_network: Callable[[], torch.nn.Module], args: argparse.Namespace
) -> torch.nn.Module:
    """Seed torch with ``--seed`` and build the network; with ``--evaluate-only`` load
    the weights at ``--output`` and switch to eval mode, else start from ``--init``
    where given."""
    torch.manual_seed(args.seed)
    network = build_network()
    if args.evaluate_only:
        network.load_state_dict(load_state(args.output))
        network.eval()
    elif getattr(args, "init", None) is not None:
        network.load_state_dict(load_state(args.init))
    return network


def train_epochs(
    network: torch.nn.Module,
    count: int,
    batch_loss: BatchLoss,
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    checkpoint: Path | None = None,
) -> None:
    """Train on ``count`` samples for ``epochs`` shuffled epochs of ``batch`` samples.

    AdamW (weight decay 1e-4) with a one-cycle schedule peaking at ``lr``; the mean
    loss is printed after each epoch and the weights saved to ``checkpoint`` (if
    given). ``batch_loss`` computes the loss of the chosen indices and may draw from
    the generator (augmentation); the network is left in eval mode.
    """
    rng = np.random.default_rng(seed)
    steps = epochs * int(np.ceil(count / batch))
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=steps, pct_start=0.15
    )
    started = time.perf_counter()
    for epoch in range(epochs):
        network.train()
        order = rng.permutation(count)
        running = []
        for start in range(0, len(order), batch):
            chosen = torch.from_numpy(order[start : start + batch])
            optimiser.zero_grad(set_to_none=True)
            loss = batch_loss(chosen, rng)
            loss.backward()
            optimiser.step()
            schedule.step()
            running.append(float(loss.detach()))
        print(
            f"epoch {epoch + 1}/{epochs} loss {np.mean(running):.4f} "
            f"elapsed {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(network.state_dict(), checkpoint)
    network.eval()
