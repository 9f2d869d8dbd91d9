"""Drive OHIF in Debian's headless chromium with Playwright (Python), for tests and by hand.

Why Python Playwright: the tests are pytest, so one process holds Orthanc, the node, the
proxy and the browser, with typed helpers and no second test runner; the ``playwright``
wheel carries its own driver, pinned by pip, and never downloads a browser when given
``executable_path``. We always pass Debian's ``/usr/bin/chromium``.

:class:`OhifPage` knows the few OHIF 3.13 gestures the tests need (open a study, load a
SEG through its hydrate prompt, open an SR, open a side panel) and reads what OHIF
exposes on ``window`` (``cornerstone``, ``services``) to wait for states and to map
patient coordinates to canvas pixels. Pixels come from the viewport's canvas (the image
and labelmap overlays; SVG annotations are not in it), not from a page screenshot.
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from playwright.sync_api import BrowserContext, Locator, Page, sync_playwright

from tools.viewer.chromium import CHROMIUM, CHROMIUM_FLAGS

#: OHIF's onboarding tour covers the image unless marked as shown.
_NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"

_VIEWPORT_JS = "cornerstone.getEnabledElements()[0].viewport"
_IMAGE_SHOWN_JS = """() => {
  const cs = window.cornerstone;
  if (!cs || !cs.getEnabledElements().length) return false;
  const vp = cs.getEnabledElements()[0].viewport;
  return Boolean(vp.getCurrentImageId && vp.getCurrentImageId() && vp.getImageData
                 && vp.getImageData());
}"""

_SHOWS_MODALITY_JS = f"""(modality) => {{
  const services = window.services;
  if (!services) return false;
  const grid = services.viewportGridService.getState();
  const viewport = grid.viewports.get(grid.activeViewportId);
  if (!viewport) return false;
  const shown = viewport.displaySetInstanceUIDs.map(
    uid => services.displaySetService.getDisplaySetByUID(uid));
  return shown.some(d => d && d.Modality === modality) && ({_IMAGE_SHOWN_JS})();
}}"""
_ANNOTATION_LINES_JS = """() => {
  const lines = [];
  document.querySelectorAll('svg.svg-layer text').forEach(text => {
    const spans = text.querySelectorAll('tspan');
    (spans.length ? Array.from(spans) : [text]).forEach(
      node => lines.push(node.textContent.replace(/\\s+/g, ' ').trim()));
  });
  return lines.filter(Boolean);
}"""


@contextmanager
def chromium(
    *, width: int = 1400, height: int = 900, executable: str = CHROMIUM
) -> Iterator[BrowserContext]:
    """A headless chromium with a fresh profile and a ``width`` x ``height`` window at 1x."""
    with (
        tempfile.TemporaryDirectory(prefix="chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": width, "height": height},
            device_scale_factor=1,
        )
        try:
            yield context
        finally:
            context.close()


def decode_png(data: bytes) -> np.ndarray:
    """An RGB ``(rows, columns, 3)`` uint8 array from PNG bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class OhifPage:
    """One OHIF tab.

    Parameters
    ----------
    page
        A Playwright page of a context from :func:`chromium`.
    base_url
        Where :class:`~tools.viewer.server.ViewerServer` serves OHIF.
    timeout
        Seconds any single wait may take (loading is slow on 2 cores with software GL).
    """

    def __init__(self, page: Page, base_url: str, *, timeout: float = 120.0) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.timeout_ms = timeout * 1000.0
        self.console: list[str] = []
        page.set_default_timeout(self.timeout_ms)
        page.on("console", lambda message: self._record(message.type, message.text))
        page.on("pageerror", lambda error: self._record("pageerror", str(error)))
        page.add_init_script(_NO_TOUR)

    def _record(self, kind: str, text: str) -> None:
        if kind in ("error", "warning", "pageerror"):
            self.console.append(f"{kind}: {text[:500]}")

    # -- navigation ------------------------------------------------------------------
    def open_study(self, study_uid: str) -> None:
        """Open the basic viewer on a study and wait until an image is drawn."""
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        self.page.wait_for_function(_IMAGE_SHOWN_JS, timeout=self.timeout_ms)

    def thumbnail(self, modality: str, description: str | None = None) -> Locator:
        """Study browser entries (thumbnails and image-less rows) of one modality."""
        label = self.page.locator(
            '[data-cy="series-modality-label"]', has_text=re.compile(rf"^{re.escape(modality)}$")
        )
        entries = self.page.locator('[data-cy^="study-browser-thumbnail"]').filter(has=label)
        return entries if description is None else entries.filter(has_text=description)

    def show_series(self, modality: str, description: str | None = None) -> None:
        """Double-click a series into the active viewport; wait until it shows an image."""
        self.thumbnail(modality, description).first.dblclick()
        self.page.wait_for_function(_SHOWS_MODALITY_JS, arg=modality, timeout=self.timeout_ms)

    def load_seg(self) -> list[dict[str, Any]]:
        """Open the first SEG, accept OHIF's hydrate prompt, wait for its segments.

        Returns ``[{"segmentIndex", "label", "color"}]`` as OHIF holds them.
        """
        self.show_series("SEG")
        self.page.locator('[data-cy="yes-hydrate-btn"]').click()
        handle = self.page.wait_for_function(
            """() => {
              const service = window.services && window.services.segmentationService;
              if (!service) return null;
              const vpId = cornerstone.getEnabledElements()[0].viewport.id;
              const reps = service.getSegmentationRepresentations(vpId) || [];
              if (!reps.length) return null;
              const seg = service.getSegmentation(reps[0].segmentationId);
              if (!seg) return null;
              return Object.values(seg.segments).filter(Boolean).map(s => ({
                segmentIndex: s.segmentIndex, label: s.label,
                color: service.getSegmentColor(vpId, reps[0].segmentationId, s.segmentIndex),
              }));
            }""",
            timeout=self.timeout_ms,
        )
        segments: list[dict[str, Any]] = handle.json_value()
        self.page.wait_for_function(_IMAGE_SHOWN_JS, timeout=self.timeout_ms)
        return segments

    def open_panel(self, name: str) -> None:
        """Open a right-hand side panel (``panelSegmentation``, ``trackedMeasurements``)."""
        self.page.locator(f'[data-cy="{name}-btn"]').click()

    def wait_for_text(self, text: str) -> Locator:
        """Wait until an element with exactly this text is visible; return it."""
        found = self.page.get_by_text(text, exact=True).first
        found.wait_for(state="visible")
        return found

    # -- the viewport ----------------------------------------------------------------
    def slice_index_nearest(self, point_mm: Sequence[float]) -> int:
        """Index of the viewport's image whose plane is nearest a patient point (LPS mm)."""
        index: int = self.page.evaluate(
            f"""(point) => {{
              const vp = {_VIEWPORT_JS};
              let best = 0, bestDistance = Infinity;
              vp.getImageIds().forEach((id, i) => {{
                const plane = cornerstone.metaData.get('imagePlaneModule', id);
                const [r, c] = [plane.rowCosines, plane.columnCosines];
                const n = [r[1]*c[2]-r[2]*c[1], r[2]*c[0]-r[0]*c[2], r[0]*c[1]-r[1]*c[0]];
                const p = plane.imagePositionPatient;
                const d = Math.abs(n[0]*(point[0]-p[0]) + n[1]*(point[1]-p[1])
                                   + n[2]*(point[2]-p[2]));
                if (d < bestDistance) {{ bestDistance = d; best = i; }}
              }});
              return best;
            }}""",
            list(point_mm),
        )
        return index

    def show_slice(self, index: int) -> None:
        """Scroll the viewport to image ``index`` and wait until that image is drawn."""
        self.page.evaluate(
            f"async (i) => {{ const vp = {_VIEWPORT_JS}; "
            "await vp.setImageIdIndex(i); vp.render(); }",
            index,
        )
        self.page.wait_for_function(
            f"(i) => {_VIEWPORT_JS}.getCurrentImageIdIndex() === i", arg=index
        )

    def image_position(self) -> list[float]:
        """ImagePositionPatient of the image on display."""
        position: list[float] = self.page.evaluate(
            f"""() => {{
              const vp = {_VIEWPORT_JS};
              return Array.from(cornerstone.metaData.get('imagePlaneModule',
                                                         vp.getCurrentImageId())
                                .imagePositionPatient);
            }}"""
        )
        return position

    def world_to_canvas(self, points_mm: np.ndarray) -> np.ndarray:
        """Canvas pixel ``(x, y)`` of each patient point ``(n, 3)`` (LPS mm), as ``(n, 2)``."""
        mapped = self.page.evaluate(
            f"(points) => {{ const vp = {_VIEWPORT_JS}; "
            "return points.map(p => Array.from(vp.worldToCanvas(p))); }",
            np.asarray(points_mm, dtype=float).tolist(),
        )
        return np.asarray(mapped, dtype=float).reshape(-1, 2)

    def canvas_to_world(self, points_px: np.ndarray) -> np.ndarray:
        """Patient point (LPS mm) of each canvas pixel position ``(n, 2)``, as ``(n, 3)``."""
        mapped = self.page.evaluate(
            f"(points) => {{ const vp = {_VIEWPORT_JS}; "
            "return points.map(p => Array.from(vp.canvasToWorld(p))); }",
            np.asarray(points_px, dtype=float).tolist(),
        )
        return np.asarray(mapped, dtype=float).reshape(-1, 3)

    def show_image(self, sop_instance_uid: str) -> int:
        """Scroll to the image with this SOP Instance UID; return its index in the stack."""
        index: int = self.page.evaluate(
            f"(uid) => {_VIEWPORT_JS}.getImageIds().findIndex("
            "id => id.includes('/instances/' + uid + '/'))",
            sop_instance_uid,
        )
        if index < 0:
            raise LookupError(f"image {sop_instance_uid} is not in the viewport's stack")
        self.show_slice(index)
        return index

    def annotation_lines(self) -> list[str]:
        """Text lines of the annotations drawn over the viewport (its SVG layer)."""
        lines: list[str] = self.page.evaluate(_ANNOTATION_LINES_JS)
        return lines

    def wait_for_annotation_line(self, line: str) -> None:
        """Wait until an annotation over the viewport shows ``line``."""
        self.page.wait_for_function(
            f"(line) => ({_ANNOTATION_LINES_JS})().includes(line)", arg=line
        )

    def canvas_png(self) -> bytes:
        """The viewport canvas as PNG bytes (what cornerstone drew: image + labelmaps)."""
        url: str = self.page.evaluate(f"() => {_VIEWPORT_JS}.canvas.toDataURL('image/png')")
        return base64.b64decode(url.split(",", 1)[1])

    def settled_canvas(self, *, interval: float = 0.25) -> tuple[bytes, np.ndarray]:
        """The canvas once two reads in a row are equal (rendering has caught up)."""
        deadline = time.monotonic() + self.timeout_ms / 1000.0
        previous = self.canvas_png()
        while True:
            time.sleep(interval)
            current = self.canvas_png()
            if current == previous:
                return current, decode_png(current)
            if time.monotonic() > deadline:
                raise TimeoutError("the viewport canvas kept changing")
            previous = current

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))


__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "OhifPage", "chromium", "decode_png"]
