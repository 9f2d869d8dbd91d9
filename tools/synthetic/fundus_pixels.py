"""Synthetic colour fundus photographs (RGB, 8-bit) with known diabetic-retinopathy-like lesions.

A macula-centred 45° photograph of a right eye is drawn in units of the image size
``s`` (so any size gives the same anatomy) and mirrored for a left eye:

* a circular field of view (radius ``0.46 s``) on black, with illumination
  vignetting, a tilt of the illumination, choroidal texture and pigmentation that
  vary per image;
* the optic disc (yellow-white, brighter cup) on the nasal side and the macula
  (darker, with an optional foveal reflex) about 2.5 disc diameters temporal to it;
* a vessel tree of arteries and veins leaving the disc in four arcades that branch
  recursively, the temporal arcades curving around the macula;
* **lesions** when the finding is present: microaneurysms (tiny dark red dots),
  dot/blot and flame haemorrhages, hard exudates (yellow clusters) and
  cotton-wool spots, in four severities — ``subtle`` (one to three faint
  microaneurysms, deliberately hard), ``mild``, ``moderate``, ``severe``;
* distractors in images without the finding: faint drusen near the macula;
* defocus blur and sensor noise.

Everything is deterministic for a given ``seed`` (numpy ``default_rng``) and uses
numpy only. Synthetic data only; the truth is what was drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tools.synthetic.raster2d import (
    gaussian_blur,
    line_profile,
    pixel_centres,
    power_law_noise,
    splat_polylines,
    stamp_gaussian,
)

Severity = Literal["none", "subtle", "mild", "moderate", "severe"]
SEVERITIES: tuple[Severity, ...] = ("none", "subtle", "mild", "moderate", "severe")
#: Share of each severity among images that have the finding.
POSITIVE_MIX: dict[Severity, float] = {"subtle": 0.3, "mild": 0.3, "moderate": 0.25, "severe": 0.15}
#: Field-of-view radius as a fraction of the image size.
FIELD_RADIUS = 0.46
#: Vessel half-width classes (Gaussian sigma, fraction of the image size), widest first.
VESSEL_SIGMAS = (0.0042, 0.0031, 0.0022, 0.0015)

LesionKind = Literal["microaneurysm", "haemorrhage", "exudate", "cotton_wool", "drusen"]
#: Lesion kinds that make the finding present (drusen are distractors).
DR_LESIONS: tuple[LesionKind, ...] = ("microaneurysm", "haemorrhage", "exudate", "cotton_wool")


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion: kind, centre ``(x, y)`` and radius (pixels, SCOORD convention)."""

    kind: LesionKind
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class FundusTruth:
    """What was drawn.

    Attributes
    ----------
    laterality
        ``"R"`` or ``"L"`` (the image of a left eye is the mirrored right eye).
    lesions_present
        The finding: at least one diabetic-retinopathy-like lesion was drawn.
    severity
        ``none``, ``subtle``, ``mild``, ``moderate`` or ``severe``.
    lesions
        Every lesion and distractor, in image coordinates.
    disc_centre, fovea_centre
        ``(x, y)`` of the optic disc and the fovea.
    disc_radius, field_radius
        In pixels.
    """

    laterality: str
    lesions_present: bool
    severity: Severity
    lesions: tuple[Lesion, ...]
    disc_centre: tuple[float, float]
    fovea_centre: tuple[float, float]
    disc_radius: float
    field_radius: float

    def count(self, kind: LesionKind) -> int:
        return sum(1 for lesion in self.lesions if lesion.kind == kind)


def _choose_severity(rng: np.random.Generator, lesions_present: bool | None) -> Severity:
    present = bool(rng.random() < 0.5) if lesions_present is None else lesions_present
    if not present:
        return "none"
    kinds = list(POSITIVE_MIX)
    return kinds[int(rng.choice(len(kinds), p=list(POSITIVE_MIX.values())))]


def _vessel_walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    turn: float,
    length: float,
    step: float,
    centre: np.ndarray,
    radius: float,
) -> np.ndarray:
    """A wandering curve: heading turns by ``turn`` per pixel plus noise; ends at the field edge."""
    count = max(int(length / step), 2)
    headings = heading + np.cumsum(turn * step + rng.normal(0.0, 0.05, count))
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    points = np.concatenate([start[None].astype(np.float64), start + np.cumsum(steps, axis=0)])
    outside = np.flatnonzero(np.hypot(*(points - centre).T) > radius * 1.02)
    return points[: outside[0] + 1] if len(outside) else points


def _vessel_tree(
    rng: np.random.Generator,
    disc: np.ndarray,
    centre: np.ndarray,
    size: int,
) -> list[tuple[np.ndarray, int, bool]]:
    """Polylines ``(points, width class, is_vein)`` of a right eye's retinal vessels."""
    radius = FIELD_RADIUS * size
    step = max(size / 256.0, 1.0)
    curves: list[tuple[np.ndarray, int, bool]] = []
    # (initial heading, turn per unit size, length in sizes): temporal arcades arc around
    # the macula (to the left of a right eye's disc), nasal vessels run straighter.
    arcades = (
        (-math.pi / 2 - 0.35, -2.6, 0.75),
        (math.pi / 2 + 0.35, 2.6, 0.75),
        (-math.pi / 2 + 0.55, 0.6, 0.4),
        (math.pi / 2 - 0.55, -0.6, 0.4),
    )

    def grow(
        start: np.ndarray, heading: float, turn: float, length: float, width: int, vein: bool
    ) -> None:
        path = _vessel_walk(rng, start, heading, turn, length, step, centre, radius)
        curves.append((path, width, vein))
        if width >= len(VESSEL_SIGMAS) - 1 or len(path) < 8:
            return
        branches = int(rng.integers(2, 4)) if width < 2 else int(rng.integers(0, 3))
        for _ in range(branches):
            at = int(rng.integers(len(path) // 5, max(len(path) - 3, len(path) // 5 + 1)))
            direction = path[min(at + 1, len(path) - 1)] - path[at]
            base = math.atan2(direction[1], direction[0])
            side = rng.choice([-1.0, 1.0])
            grow(
                path[at],
                base + side * rng.uniform(0.4, 1.0),
                rng.normal(0.0, 1.5) / size,
                length * rng.uniform(0.35, 0.6),
                width + 1,
                vein,
            )

    for heading, turn, length in arcades:
        for vein in (True, False):
            offset = rng.normal(0.0, 0.08) + (0.12 if vein else -0.12)
            grow(
                disc + rng.normal(0.0, 0.01 * size, 2),
                heading + offset,
                (turn + rng.normal(0.0, 0.3)) / size,
                length * size * rng.uniform(0.85, 1.1),
                0 if vein else 1,
                vein,
            )
    return curves


def _place(
    rng: np.random.Generator,
    around: np.ndarray,
    spread: float,
    centre: np.ndarray,
    radius: float,
    disc: np.ndarray,
    disc_radius: float,
) -> np.ndarray:
    """A random point near ``around`` inside the field and off the disc."""
    for _ in range(100):
        point = around + rng.normal(0.0, spread, 2)
        if np.hypot(*(point - centre)) < 0.9 * radius and np.hypot(*(point - disc)) > (
            1.6 * disc_radius
        ):
            return point
    return np.asarray(around, dtype=np.float64)


def _lesion_counts(severity: Severity, rng: np.random.Generator) -> dict[LesionKind, int]:
    table: dict[Severity, dict[LesionKind, tuple[int, int]]] = {
        "none": {},
        "subtle": {"microaneurysm": (1, 3)},
        "mild": {"microaneurysm": (3, 8), "haemorrhage": (0, 2)},
        "moderate": {"microaneurysm": (6, 15), "haemorrhage": (2, 6), "exudate": (0, 1)},
        "severe": {
            "microaneurysm": (10, 25),
            "haemorrhage": (5, 12),
            "exudate": (1, 3),
            "cotton_wool": (0, 3),
        },
    }
    return {kind: int(rng.integers(lo, hi + 1)) for kind, (lo, hi) in table[severity].items()}


def make_fundus_pixels(
    seed: int,
    size: int = 512,
    *,
    lesions_present: bool | None = None,
    severity: Severity | None = None,
    laterality: str | None = None,
) -> tuple[np.ndarray, FundusTruth]:
    """One synthetic colour fundus photograph and its truth.

    Parameters
    ----------
    seed
        Seed of everything random (anatomy, finding, lesions, image quality).
    size
        Rows = columns of the image (at least 64).
    lesions_present
        Force the finding (None: drawn with probability 0.5).
    severity
        Force a severity (overrides ``lesions_present``).
    laterality
        ``"R"`` or ``"L"`` (None: random).

    Returns
    -------
    image, truth
        ``uint8`` array ``(size, size, 3)`` (RGB) and :class:`FundusTruth`.
    """
    if size < 64:
        raise ValueError(f"fundus image size {size} is below 64 pixels")
    if laterality not in (None, "R", "L"):
        raise ValueError(f"laterality {laterality!r} is not 'R' or 'L'")
    if severity is not None and severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    rng = np.random.default_rng(seed)
    eye = laterality or ("R" if rng.random() < 0.5 else "L")
    chosen: Severity = severity or _choose_severity(rng, lesions_present)
    s = float(size)
    shape = (size, size)
    x, y = pixel_centres(shape)
    centre = np.array([s / 2, s / 2]) + rng.normal(0.0, 0.01 * s, 2)
    radius = FIELD_RADIUS * s
    disc_radius = rng.uniform(0.042, 0.055) * s
    disc = centre + np.array([rng.uniform(0.13, 0.17) * s, rng.normal(0.0, 0.02 * s)])
    fovea = disc + disc_radius * np.array([-rng.uniform(4.6, 5.4), rng.uniform(0.0, 0.6)])

    # Background: pigmentation, choroidal texture, illumination.
    base = np.array(
        [rng.uniform(0.72, 0.92), rng.uniform(0.26, 0.40), rng.uniform(0.07, 0.16)], np.float32
    )
    texture = power_law_noise(shape, 2.2, rng, cutoff=2.0 / s)
    colour = base[None, None, :] * (1.0 + rng.uniform(0.02, 0.05) * texture[..., None])
    rho = np.hypot(x - centre[0], y - centre[1]) / radius
    tilt = rng.normal(0.0, 0.15, 2)
    illumination = (
        1.0
        - rng.uniform(0.3, 0.6) * rho ** rng.uniform(2.0, 4.0)
        + tilt[0] * (x - centre[0]) / radius
        + tilt[1] * (y - centre[1]) / radius
    )

    # Macula and fovea.
    macula = np.zeros(shape, np.float32)
    stamp_gaussian(macula, fovea[0], fovea[1], 0.06 * s, amplitude=rng.uniform(0.15, 0.3))
    colour *= (1.0 - macula)[..., None]
    if rng.random() < 0.6:
        reflex = np.zeros(shape, np.float32)
        stamp_gaussian(reflex, fovea[0], fovea[1], 0.004 * s, amplitude=rng.uniform(0.1, 0.3))
        colour += reflex[..., None] * np.array([0.9, 0.8, 0.6], np.float32)

    # Vessels (drawn before the disc, which covers their roots).
    tree = _vessel_tree(rng, disc, centre, size)
    darkness = np.zeros(shape, np.float32)
    for width, sigma in enumerate(VESSEL_SIGMAS):
        for vein in (True, False):
            density = np.zeros(shape, np.float32)
            splat_polylines(density, [p for p, w, v in tree if w == width and v == vein])
            if density.any():
                contrast = (0.55 if vein else 0.35) * (1.0 - 0.12 * width)
                darkness += contrast * line_profile(density, sigma * s)
    darkness = np.clip(darkness, 0.0, 0.8)
    colour *= 1.0 - darkness[..., None] * np.array([0.35, 0.7, 0.6], np.float32)

    # Optic disc with its cup.
    disc_mask = np.zeros(shape, np.float32)
    stamp_gaussian(disc_mask, disc[0], disc[1], disc_radius * 0.75, disc_radius * 0.82, power=5.0)
    disc_mask = np.clip(disc_mask * rng.uniform(0.75, 0.95), 0.0, 1.0)
    disc_colour = np.array([1.0, rng.uniform(0.75, 0.88), rng.uniform(0.45, 0.6)], np.float32)
    colour = colour * (1.0 - disc_mask[..., None]) + disc_colour * disc_mask[..., None]
    cup = np.zeros(shape, np.float32)
    stamp_gaussian(cup, disc[0] - 0.1 * disc_radius, disc[1], disc_radius * rng.uniform(0.25, 0.45))
    colour = np.minimum(colour + 0.25 * cup[..., None], 1.05)

    # Lesions (the finding) and distractors.
    lesions: list[Lesion] = []
    red = np.zeros(shape, np.float32)  # haemoglobin-dark lesions
    yellow = np.zeros(shape, np.float32)  # exudates
    white = np.zeros(shape, np.float32)  # cotton-wool spots
    pale = np.zeros(shape, np.float32)  # drusen
    unit = s / 512.0
    counts = _lesion_counts(chosen, rng)
    for _ in range(counts.get("microaneurysm", 0)):
        p = _place(rng, fovea, 0.16 * s, centre, radius, disc, disc_radius)
        sigma = rng.uniform(1.3, 2.2) * unit
        strength = rng.uniform(0.25, 0.45) if chosen == "subtle" else rng.uniform(0.4, 0.75)
        stamp_gaussian(red, p[0], p[1], sigma, amplitude=strength, power=3.0)
        lesions.append(Lesion("microaneurysm", float(p[0]), float(p[1]), 2.0 * sigma))
    for _ in range(counts.get("haemorrhage", 0)):
        p = _place(rng, fovea, 0.2 * s, centre, radius, disc, disc_radius)
        sx = rng.uniform(3.0, 8.0) * unit
        sy = sx * rng.uniform(0.5, 1.0)
        stamp_gaussian(
            red, p[0], p[1], sx, sy, rng.uniform(0.45, 0.75), rng.uniform(0, math.pi), 3.0
        )
        lesions.append(Lesion("haemorrhage", float(p[0]), float(p[1]), 2.0 * sx))
    for _ in range(counts.get("exudate", 0)):
        anchor = _place(rng, fovea, 0.1 * s, centre, radius, disc, disc_radius)
        for _ in range(int(rng.integers(3, 12))):
            p = _place(rng, anchor, 0.02 * s, centre, radius, disc, disc_radius)
            sigma = rng.uniform(1.5, 3.5) * unit
            stamp_gaussian(yellow, p[0], p[1], sigma, amplitude=rng.uniform(0.5, 0.9), power=3.0)
            lesions.append(Lesion("exudate", float(p[0]), float(p[1]), 2.0 * sigma))
    for _ in range(counts.get("cotton_wool", 0)):
        p = _place(rng, disc, 0.12 * s, centre, radius, disc, disc_radius)
        sigma = rng.uniform(5.0, 9.0) * unit
        stamp_gaussian(white, p[0], p[1], sigma, sigma * 0.7, rng.uniform(0.3, 0.5))
        lesions.append(Lesion("cotton_wool", float(p[0]), float(p[1]), 2.0 * sigma))
    if chosen == "none" and rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 5))):
            p = _place(rng, fovea, 0.08 * s, centre, radius, disc, disc_radius)
            sigma = rng.uniform(2.0, 3.5) * unit
            stamp_gaussian(pale, p[0], p[1], sigma, amplitude=rng.uniform(0.1, 0.2))
            lesions.append(Lesion("drusen", float(p[0]), float(p[1]), 2.0 * sigma))
    red = np.clip(red, 0.0, 0.85)[..., None]
    colour = colour * (1.0 - red * np.array([0.55, 0.8, 0.75], np.float32))
    for layer, tint in (
        (yellow, (1.0, 0.92, 0.45)),
        (white, (0.95, 0.9, 0.82)),
        (pale, (0.95, 0.85, 0.55)),
    ):
        alpha = np.clip(layer, 0.0, 0.95)[..., None]
        colour = colour * (1.0 - alpha) + np.asarray(tint, np.float32) * alpha

    # Illumination, field stop, optics and sensor.
    gain = rng.uniform(0.8, 1.15)
    colour = colour * (illumination * gain)[..., None]
    edge = np.clip((radius - np.hypot(x - centre[0], y - centre[1])) / (0.006 * s), 0.0, 1.0)
    colour *= edge[..., None]
    blur = rng.uniform(0.0, 1.2) * unit
    channels = [gaussian_blur(colour[..., c], blur) for c in range(3)]
    image = np.stack(channels, axis=-1) * 255.0
    image += rng.normal(0.0, rng.uniform(1.5, 5.0), image.shape) * edge[..., None]
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def mirror(point: np.ndarray | tuple[float, float]) -> tuple[float, float]:
        px, py = float(point[0]), float(point[1])
        return (s - px, py) if eye == "L" else (px, py)

    if eye == "L":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    truth = FundusTruth(
        laterality=eye,
        lesions_present=chosen != "none",
        severity=chosen,
        lesions=tuple(
            Lesion(lesion.kind, *mirror((lesion.x, lesion.y)), lesion.radius) for lesion in lesions
        ),
        disc_centre=mirror(disc),
        fovea_centre=mirror(fovea),
        disc_radius=float(disc_radius),
        field_radius=float(radius),
    )
    return pixels, truth


__all__ = [
    "DR_LESIONS",
    "FIELD_RADIUS",
    "SEVERITIES",
    "FundusTruth",
    "Lesion",
    "Severity",
    "make_fundus_pixels",
]
