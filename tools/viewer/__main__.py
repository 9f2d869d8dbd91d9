"""``make viewer``: OHIF on the development Orthanc, at http://127.0.0.1:3000.

Installs the pinned OHIF dist when it is missing, starts the development Orthanc from
``orthanc/orthanc.json`` when nothing answers at ``--orthanc`` (and that file names the
same port), then serves OHIF with ``/dicom-web`` proxied to Orthanc until Ctrl-C.
Run ``make demo`` (or send studies to Orthanc) to have something to look at.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from tools.net import LOCALHOST, http_ok
from tools.node_process import PROJECT_ROOT
from tools.orthanc import OrthancError, OrthancServer
from tools.viewer.ohif import OhifInstallError, install
from tools.viewer.server import ViewerServer

DEFAULT_ORTHANC_CONFIG = PROJECT_ROOT / "orthanc" / "orthanc.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.viewer",
        description="Serve OHIF with /dicom-web proxied to an Orthanc (one origin).",
    )
    parser.add_argument("--orthanc", default="http://127.0.0.1:8042", help="Orthanc base URL")
    parser.add_argument("--port", type=int, default=3000, help="viewer port (0: any free)")
    parser.add_argument("--host", default=LOCALHOST, help="address to listen on")
    parser.add_argument(
        "--orthanc-config",
        type=Path,
        default=DEFAULT_ORTHANC_CONFIG,
        help="start Orthanc from this file when --orthanc does not answer",
    )
    parser.add_argument("--no-start-orthanc", action="store_true", help="never start Orthanc")
    return parser.parse_args(argv)


def _start_orthanc_if_needed(args: argparse.Namespace, stack: ExitStack) -> None:
    if http_ok(f"{args.orthanc.rstrip('/')}/system"):
        return
    wanted = urllib.parse.urlsplit(args.orthanc).port
    config_port = None
    if args.orthanc_config.is_file():
        config_port = json.loads(args.orthanc_config.read_text(encoding="utf-8")).get("HttpPort")
    if args.no_start_orthanc or config_port != wanted:
        raise OrthancError(f"no Orthanc answers at {args.orthanc}")
    log_dir = args.orthanc_config.resolve().parent.parent / "var"
    stack.enter_context(OrthancServer.from_config_file(args.orthanc_config, log_dir=log_dir))
    print(f"started Orthanc from {args.orthanc_config} (log in {log_dir})")


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tools.viewer``; returns the exit status."""
    args = parse_args(argv)
    # An Orthanc started here runs in its own session: make SIGTERM unwind and stop it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        dist = install()
        with ExitStack() as stack:
            _start_orthanc_if_needed(args, stack)
            server = ViewerServer(dist, args.orthanc, port=args.port, host=args.host)
            stack.callback(server.stop)
            print(f"OHIF {dist.name} on {server.url}  (DICOMweb: {args.orthanc}/dicom-web)")
            print("Ctrl-C to stop.", flush=True)
            server.serve_forever()
    except (OhifInstallError, OrthancError, OSError) as exc:
        print(f"viewer failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
