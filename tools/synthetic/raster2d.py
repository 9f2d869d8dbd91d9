"""Small numpy-only drawing helpers for the 2-D synthetic image generators.

Everything works on ``float32`` arrays shaped ``(rows, columns)`` in pixel units,
with the SCOORD convention of :class:`~node.contract.plugin.Detection`: ``x`` runs
along the columns, ``y`` along the rows, and pixel ``(r, c)`` has its centre at
``(c + 0.5, r + 0.5)``. No scipy: blurs are Gaussian filters applied in the
Fourier domain (periodic boundary, so callers pad or keep content off the edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pixel_centres(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` grids of pixel-centre coordinates, each shaped ``shape``."""
    rows, columns = shape
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    return x + 0.5, y + 0.5


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (FFT, periodic edges)."""
    if sigma <= 0:
        return image.astype(np.float32, copy=True)
    rows, columns = image.shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(columns)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    blurred = np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape)
    return blurred.astype(np.float32)


def power_law_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, *, cutoff: float = 0.0
) -> np.ndarray:
    """Zero-mean, unit-variance noise with power spectrum ``1 / f**beta``.

    ``beta`` near 3 gives the cloud-like texture of breast parenchyma; ``cutoff``
    (cycles per pixel) removes wavelengths longer than ``1 / cutoff``.
    """
    rows, columns = shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(columns)[None, :]
    frequency = np.sqrt(fx**2 + fy**2)
    frequency[0, 0] = 1.0
    amplitude = frequency ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    if cutoff > 0:
        amplitude[frequency < cutoff] = 0.0
    phases = rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)
    spectrum = amplitude * phases
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def splat_polylines(
    canvas: np.ndarray, polylines: Sequence[np.ndarray], weight: float = 1.0, step: float = 0.5
) -> None:
    """Add polylines to ``canvas`` as a line density (``weight`` per pixel of length).

    Each polyline is ``(n, 2)`` of ``(x, y)``. Samples every ``step`` pixels along it
    are spread bilinearly, so a Gaussian blur of the result is a smooth line with a
    Gaussian cross-section (see :func:`line_profile`).
    """
    samples = []
    for line in polylines:
        points = np.asarray(line, dtype=np.float64)
        if len(points) < 2:
            continue
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
        along = np.arange(0.0, arc[-1], step) if arc[-1] > 0 else np.zeros(1)
        samples.append(
            np.stack([np.interp(along, arc, points[:, 0]), np.interp(along, arc, points[:, 1])], 1)
        )
    if not samples:
        return
    where = np.concatenate(samples) - 0.5  # pixel-centre coordinates → array indices
    rows, columns = canvas.shape
    x0 = np.floor(where[:, 0]).astype(int)
    y0 = np.floor(where[:, 1]).astype(int)
    fx = where[:, 0] - x0
    fy = where[:, 1] - y0
    mass = weight * step
    for dy, dx, share in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        r = y0 + dy
        c = x0 + dx
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < columns)
        np.add.at(canvas, (r[inside], c[inside]), mass * share[inside])


def line_profile(density: np.ndarray, sigma: float) -> np.ndarray:
    """Blur a line density into lines whose centre value is about 1 (clipped at 1)."""
    blurred = gaussian_blur(density, sigma) * (np.sqrt(2.0 * np.pi) * sigma)
    return np.clip(blurred, 0.0, 1.0)


def stamp_gaussian(
    canvas: np.ndarray,
    x: float,
    y: float,
    sigma_x: float,
    sigma_y: float | None = None,
    amplitude: float = 1.0,
    angle: float = 0.0,
    power: float = 2.0,
) -> None:
    """Add an (optionally elongated, rotated) blob peaking at ``amplitude`` at ``(x, y)``.

    ``power`` 2 is a Gaussian; larger values flatten the top (a blob with a
    sharper rim, like a haemorrhage or a circumscribed mass).
    """
    sigma_y = sigma_x if sigma_y is None else sigma_y
    reach = 3.5 * max(sigma_x, sigma_y)
    rows, columns = canvas.shape
    r0, r1 = max(int(y - reach), 0), min(int(y + reach) + 2, rows)
    c0, c1 = max(int(x - reach), 0), min(int(x + reach) + 2, columns)
    if r0 >= r1 or c0 >= c1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    dx = xx + 0.5 - x
    dy = yy + 0.5 - y
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / sigma_x
    v = (-dx * sin + dy * cos) / sigma_y
    canvas[r0:r1, c0:c1] += amplitude * np.exp(-0.5 * (u**2 + v**2) ** (power / 2.0))


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks over the leading two axes (edges cropped)."""
    rows = image.shape[0] // factor * factor
    columns = image.shape[1] // factor * factor
    cropped = image[:rows, :columns]
    shape = (rows // factor, factor, columns // factor, factor, *image.shape[2:])
    return cropped.reshape(shape).mean(axis=(1, 3))


__all__ = [
    "area_downsample",
    "gaussian_blur",
    "line_profile",
    "pixel_centres",
    "power_law_noise",
    "splat_polylines",
    "stamp_gaussian",
]
