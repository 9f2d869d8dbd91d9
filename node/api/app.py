"""The HTTP side of the node (FastAPI): health now, admin API and console later."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from node import __version__
from node.app import Node


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="ainode", version=__version__)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the DICOM listener is up, 503 otherwise."""
        body: dict[str, Any] = {
            "status": "ok" if node.scp.running else "starting",
            "version": __version__,
            "ae_title": node.settings.node.ae_title,
            "dicom_port": node.settings.node.dicom_port,
            "device": str(node.device),
            "plugins": sorted(node.registry.names),
            "plugin_errors": node.registry.errors,
            "jobs": node.queue.depth(),
            "dicom": node.scp.counts,
        }
        return JSONResponse(body, status_code=200 if node.scp.running else 503)

    return app
