"""The OHIF v3 viewer: the prebuilt ``dist/`` of the npm package ``@ohif/app``, pinned.

``python -m tools.viewer.ohif`` installs it (``make test`` and ``make viewer`` do).
The package is fetched with ``npm pack`` (the npm registry's ordinary client), its
SHA-512 is checked against :data:`OHIF_INTEGRITY` and only ``dist/`` is unpacked into
:func:`ohif_dir` (``var/viewer/ohif-<version>/`` in the checkout, git-ignored;
``AINODE_OHIF_DIR`` overrides it). Nothing else of npm is needed: the dist is a complete
static web app.

Why not ``npm ci`` with a lockfile: ``@ohif/app@3.13.2`` declares dependencies the
registry does not have (``@ohif/i18n@3.13.2``), so ``npm install`` of it fails; and the
bundled dist needs none of them. The pinned version plus the pinned integrity hash give
what a lockfile would.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tools.node_process import PROJECT_ROOT

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
#: ``dist.integrity`` of ``@ohif/app@3.13.2`` in the npm registry.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKx"
    "Ffpq+jd5xXZB9E8EA=="
)
#: A file every complete install has (written last).
_MARKER = ".ainode-installed"


class OhifInstallError(RuntimeError):
    """``npm pack`` failed, the tarball did not match its pinned hash, or no dist is installed."""


def ohif_dir() -> Path:
    """Where the OHIF dist lives: ``$AINODE_OHIF_DIR`` or ``var/viewer/ohif-<version>``."""
    override = os.environ.get("AINODE_OHIF_DIR")
    if override:
        return Path(override)
    return PROJECT_ROOT / "var" / "viewer" / f"ohif-{OHIF_VERSION}"


def is_installed(target: Path | None = None) -> bool:
    target = ohif_dir() if target is None else target
    return (target / _MARKER).is_file() and (target / "index.html").is_file()


def require_installed(target: Path | None = None) -> Path:
    """The dist directory; raises :class:`OhifInstallError` naming the install command."""
    target = ohif_dir() if target is None else target
    if not is_installed(target):
        raise OhifInstallError(
            f"OHIF {OHIF_VERSION} is not installed in {target}; run: python -m tools.viewer.ohif"
        )
    return target


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def install(target: Path | None = None, *, npm: str = "npm", force: bool = False) -> Path:
    """Fetch, verify and unpack the pinned ``@ohif/app`` dist into ``target``; return it.

    Idempotent: an existing complete install is kept unless ``force``.
    """
    target = ohif_dir() if target is None else target
    if is_installed(target) and not force:
        return target
    if shutil.which(npm) is None:
        raise OhifInstallError(f"{npm!r} not found: install Node.js and npm first")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ohif-", dir=target.parent) as scratch:
        scratch_dir = Path(scratch)
        spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
        result = subprocess.run(
            [npm, "pack", spec, "--pack-destination", str(scratch_dir), "--silent"],
            capture_output=True,
            text=True,
            check=False,
            cwd=scratch_dir,
        )
        tarballs = list(scratch_dir.glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise OhifInstallError(f"npm pack {spec} failed: {result.stderr.strip()[-2000:]}")
        found = _integrity(tarballs[0])
        if found != OHIF_INTEGRITY:
            raise OhifInstallError(f"{spec}: integrity {found} is not the pinned {OHIF_INTEGRITY}")
        unpacked = scratch_dir / "dist"
        with tarfile.open(tarballs[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            for member in members:
                member.name = member.name.removeprefix("package/")
            archive.extractall(scratch_dir, members=members, filter="data")
        (unpacked / _MARKER).write_text(f"{spec} {OHIF_INTEGRITY}\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.viewer.ohif",
        description=f"Install the prebuilt OHIF viewer ({OHIF_PACKAGE}@{OHIF_VERSION}).",
    )
    parser.add_argument("--target", type=Path, default=None, help="default: %(default)s")
    parser.add_argument("--force", action="store_true", help="reinstall over a complete install")
    args = parser.parse_args(argv)
    target = args.target or ohif_dir()
    if is_installed(target) and not args.force:
        print(f"OHIF {OHIF_VERSION} already installed in {target}")
        return 0
    try:
        install(target, force=args.force)
    except OhifInstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"OHIF {OHIF_VERSION} installed in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
