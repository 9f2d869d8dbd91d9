"""Synthetic 2-D mammograms (For Presentation, MONOCHROME2, 12-bit) with known masses.

A left breast is drawn with the chest wall at column 0 and mirrored for a right
breast, which puts the chest wall where DICOM's Patient Orientation says it is
(left: ``A\\R`` for CC, ``A\\FR`` for MLO; right: ``P\\L``, ``P\\FL``):

* the breast outline: a half ellipse for CC, an ellipse stretched up into the axilla
  for MLO, with a slightly irregular contour; tissue thickness falls off towards
  the skin, and a thin brighter skin line runs along the contour;
* fibroglandular tissue: power-law (1/f³) noise thresholded softly into a dense
  cone behind the nipple, its amount varying from fatty to dense breasts;
* the pectoral muscle in MLO views: a bright, slightly convex triangle in the upper
  chest-wall corner;
* **masses** (none in about 40 % of images, otherwise one or two): round, oval or
  spiculated, 8-30 mm across, with contrast from subtle to obvious, anywhere in the
  breast off the pectoral muscle; each has a box ``(x_min, y_min, x_max, y_max)`` in
  the SCOORD convention of :class:`~node.contract.plugin.Detection`;
* detector blur and noise.

Everything is deterministic for a given ``seed`` and uses numpy only. Synthetic
data only; the truth is what was drawn.
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

MassShape = Literal["round", "oval", "spiculated"]
MASS_SHAPES: tuple[MassShape, ...] = ("round", "oval", "spiculated")
VIEWS = ("CC", "MLO")
#: DICOM Patient Orientation (row direction, column direction) per laterality and view.
PATIENT_ORIENTATION: dict[tuple[str, str], tuple[str, str]] = {
    ("L", "CC"): ("A", "R"),
    ("L", "MLO"): ("A", "FR"),
    ("R", "CC"): ("P", "L"),
    ("R", "MLO"): ("P", "FL"),
}
#: Largest stored value (12-bit).
MAX_STORED = 4095
#: Mass diameters drawn (mm).
MASS_DIAMETER_MM = (8.0, 30.0)


@dataclass(frozen=True)
class Mass:
    """One drawn mass: shape, centre, semi-axes (mm), contrast and its box (pixels)."""

    shape: MassShape
    x: float
    y: float
    semi_axes_mm: tuple[float, float]
    contrast: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class MammogramTruth:
    """What was drawn.

    Attributes
    ----------
    laterality, view
        ``"L"``/``"R"`` and ``"CC"``/``"MLO"``.
    patient_orientation
        DICOM Patient Orientation of the image.
    pixel_spacing_mm
        Row and column spacing (square pixels).
    masses
        Every mass, boxes in image coordinates (SCOORD convention).
    breast_mask
        ``bool`` array, the breast including the pectoral muscle.
    density
        Share of fibroglandular tissue in the breast (0-1).
    """

    laterality: str
    view: str
    patient_orientation: tuple[str, str]
    pixel_spacing_mm: float
    masses: tuple[Mass, ...]
    breast_mask: np.ndarray
    density: float

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [mass.box for mass in self.masses]


def _outline(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, rows: int, columns: int, view: str
) -> np.ndarray:
    """Normalised depth ``rho`` (0 at the chest wall centre, 1 at the skin) of a left breast."""
    depth = rng.uniform(0.6, 0.88) * columns
    if view == "CC":
        centre = rows / 2 + rng.normal(0.0, 0.02 * rows)
        up = down = rng.uniform(0.36, 0.46) * rows
    else:
        centre = rng.uniform(0.52, 0.62) * rows
        up = centre * rng.uniform(1.12, 1.3)
        down = rng.uniform(0.3, 0.38) * rows
    u = x / depth
    v = np.where(y < centre, (y - centre) / up, (y - centre) / down)
    angle = np.arctan2(v, u)
    wobble = np.ones_like(angle)
    for harmonic in (2, 3, 5):
        wobble = wobble + rng.normal(0.0, 0.015) * np.cos(harmonic * angle + rng.uniform(0, 6.3))
    return np.hypot(u, v) / wobble


def _mass_box(
    x: float, y: float, a: float, b: float, angle: float, rows: int, columns: int
) -> tuple[float, float, float, float]:
    half_x = math.sqrt((a * math.cos(angle)) ** 2 + (b * math.sin(angle)) ** 2)
    half_y = math.sqrt((a * math.sin(angle)) ** 2 + (b * math.cos(angle)) ** 2)
    return (
        max(x - half_x, 0.0),
        max(y - half_y, 0.0),
        min(x + half_x, float(columns)),
        min(y + half_y, float(rows)),
    )


def make_mammogram_pixels(
    seed: int,
    rows: int = 480,
    columns: int = 384,
    pixel_spacing_mm: float = 0.5,
    *,
    laterality: str | None = None,
    view: str | None = None,
    masses: int | None = None,
) -> tuple[np.ndarray, MammogramTruth]:
    """One synthetic For Presentation mammogram and its truth.

    Parameters
    ----------
    seed
        Seed of everything random.
    rows, columns, pixel_spacing_mm
        Image grid (the breast scales with the grid; masses are sized in mm).
    laterality, view
        ``"L"``/``"R"`` and ``"CC"``/``"MLO"`` (None: random).
    masses
        Number of masses, 0-3 (None: 0 with probability 0.4, else 1 or 2).

    Returns
    -------
    image, truth
        ``uint16`` array ``(rows, columns)``, MONOCHROME2 (dense is bright), values 0-4095,
        and :class:`MammogramTruth`.
    """
    if rows < 64 or columns < 64:
        raise ValueError(f"mammogram grid {rows}x{columns} is below 64x64")
    if laterality not in (None, "L", "R"):
        raise ValueError(f"laterality {laterality!r} is not 'L' or 'R'")
    if view not in (None, *VIEWS):
        raise ValueError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    if masses is not None and not 0 <= masses <= 3:
        raise ValueError(f"{masses} masses requested; 0 to 3 are supported")
    rng = np.random.default_rng(seed)
    side = laterality or ("L" if rng.random() < 0.5 else "R")
    chosen_view = view or ("CC" if rng.random() < 0.5 else "MLO")
    if masses is None:
        masses = 0 if rng.random() < 0.4 else (1 if rng.random() < 0.7 else 2)
    shape = (rows, columns)
    mm = 1.0 / pixel_spacing_mm  # pixels per mm
    x, y = pixel_centres(shape)
    rho = _outline(rng, x, y, rows, columns, chosen_view)
    breast = rho <= 1.0
    skin = np.clip((1.0 - rho) / 0.04, 0.0, 1.0)  # 0 at the skin → 1 inside

    # Pectoral muscle (MLO): a convex triangle in the upper chest-wall corner.
    pectoral = np.zeros(shape, np.float32)
    if chosen_view == "MLO":
        top_width = float(np.count_nonzero(breast[0])) or 0.2 * columns
        width = rng.uniform(0.8, 1.05) * top_width
        height = rng.uniform(0.35, 0.6) * rows
        reach = x / width + y / height
        bulge = 0.08 * np.sin(np.pi * np.clip(y / height, 0.0, 1.0))
        pectoral = np.clip((1.0 + bulge - reach) / (0.01 + 1.5 * mm / width), 0.0, 1.0)
        pectoral *= breast

    # Tissue: fat, fibroglandular density, thickness fall-off, skin line.
    density_bias = rng.uniform(-1.2, 0.8)
    cone = density_bias + 1.6 * (1.0 - rho**2) - 0.5 * np.abs(y - rows / 2) / rows
    texture = power_law_noise(shape, 2.7, rng, cutoff=1.0 / max(rows, columns))
    fibro = 1.0 / (1.0 + np.exp(-3.0 * (texture + cone - 1.0)))
    fibro *= breast * (1.0 - pectoral)
    fine = power_law_noise(shape, 1.8, rng)
    thickness = 0.55 + 0.45 * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    tissue = (0.32 + 0.3 * fibro + 0.015 * fine) * thickness
    tissue = tissue * (1.0 - pectoral) + (0.72 + 0.04 * texture) * pectoral
    skin_line = np.exp(-(((1.0 - rho) * max(rows, columns) / mm / 1.2) ** 2))
    tissue += 0.08 * skin_line
    image = np.where(breast, tissue * (0.85 + 0.15 * skin), 0.03).astype(np.float32)

    # Masses.
    drawn: list[Mass] = []
    lesion = np.zeros(shape, np.float32)
    spicules: list[np.ndarray] = []
    for _ in range(masses):
        diameter = rng.uniform(*MASS_DIAMETER_MM)
        kind: MassShape = MASS_SHAPES[int(rng.integers(3))]
        a = diameter / 2.0 * mm
        b = a * (rng.uniform(0.55, 0.8) if kind == "oval" else rng.uniform(0.9, 1.0))
        angle = float(rng.uniform(0.0, math.pi))
        margin = a + 3.0 * mm
        allowed = breast & (rho < 0.85) & (pectoral < 0.01) & (x > margin) & (x < columns - margin)
        allowed &= (y > margin) & (y < rows - margin)
        candidates = np.argwhere(allowed)
        if len(candidates) == 0:
            raise ValueError(f"no room for a {diameter:.0f} mm mass in a {rows}x{columns} image")
        for _attempt in range(50):
            r, c = candidates[int(rng.integers(len(candidates)))]
            cx, cy = float(c) + 0.5, float(r) + 0.5
            if all(math.hypot(cx - m.x, cy - m.y) > (a + max(m.semi_axes_mm) * mm) for m in drawn):
                break
        subtle = rng.random() < 0.3
        contrast = float(rng.uniform(0.1, 0.18) if subtle else rng.uniform(0.18, 0.35))
        power = 4.0 if kind != "spiculated" else 2.5
        sigma = 1.0 / math.log(4.0) ** (1.0 / power)  # profile is 0.5 at the semi-axis
        stamp_gaussian(lesion, cx, cy, a * sigma, b * sigma, contrast, angle, power)
        if kind == "spiculated":
            for _ in range(int(rng.integers(8, 17))):
                theta = rng.uniform(0.0, 2.0 * math.pi)
                length = a * rng.uniform(1.6, 2.8)
                t = np.linspace(0.6 * a, length, 12)[:, None]
                bend = rng.normal(0.0, 0.08)
                heading = theta + bend * t[:, 0] / a
                direction = np.stack([np.cos(heading), np.sin(heading)], 1)
                spicules.append(np.array([cx, cy]) + t * direction)
        drawn.append(
            Mass(
                kind,
                cx,
                cy,
                (a / mm, b / mm),
                contrast,
                _mass_box(cx, cy, a, b, angle, rows, columns),
            )
        )
    if spicules:
        density = np.zeros(shape, np.float32)
        splat_polylines(density, spicules)
        lesion += (
            0.5
            * max(m.contrast for m in drawn if m.shape == "spiculated")
            * line_profile(density, 0.5 * mm)
        )
    image += lesion * breast

    # Detector: blur and noise, then 12-bit.
    image = gaussian_blur(image, 0.3 * mm)
    image += rng.normal(0.0, rng.uniform(0.006, 0.015), shape).astype(np.float32)
    pixels = np.clip(np.rint(image * MAX_STORED), 0, MAX_STORED).astype(np.uint16)

    if side == "R":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        breast = np.ascontiguousarray(breast[:, ::-1])
        drawn = [
            Mass(
                m.shape,
                columns - m.x,
                m.y,
                m.semi_axes_mm,
                m.contrast,
                (columns - m.box[2], m.box[1], columns - m.box[0], m.box[3]),
            )
            for m in drawn
        ]
    inside = max(int(breast.sum()), 1)
    truth = MammogramTruth(
        laterality=side,
        view=chosen_view,
        patient_orientation=PATIENT_ORIENTATION[(side, chosen_view)],
        pixel_spacing_mm=pixel_spacing_mm,
        masses=tuple(drawn),
        breast_mask=breast,
        density=float((fibro > 0.5).sum() / inside),
    )
    return pixels, truth


__all__ = [
    "MASS_DIAMETER_MM",
    "MASS_SHAPES",
    "MAX_STORED",
    "PATIENT_ORIENTATION",
    "VIEWS",
    "MammogramTruth",
    "Mass",
    "make_mammogram_pixels",
]
