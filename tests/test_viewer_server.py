"""The viewer's one-origin server: static OHIF files, app-config.js, /dicom-web -> Orthanc.

Runs against a real Orthanc with its DICOMweb plugin and a small stand-in dist (the real
OHIF is exercised by ``test_viewer.py``).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tools.orthanc import OrthancServer
from tools.orthanc_rest import lookup_study
from tools.synthetic.chest_ct import make_chest_ct
from tools.viewer.ohif import OhifInstallError, is_installed, require_installed
from tools.viewer.server import ViewerServer, app_config


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    (root / "index.html").write_text("<!doctype html><title>OHIF stand-in</title>")
    (root / "app.bundle.js").write_text("console.log('ohif');")
    (root / "codec.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (root.parent / "secret.txt").write_text("outside the dist")
    return root


@pytest.fixture(scope="module")
def served(dist: Path) -> Iterator[tuple[OrthancServer, ViewerServer]]:
    with OrthancServer() as pacs, ViewerServer(dist, pacs.url) as viewer:
        yield pacs, viewer


def test_static_files_and_single_page_routes(served: tuple[OrthancServer, ViewerServer]) -> None:
    _, viewer = served
    with httpx.Client(base_url=viewer.url) as http:
        assert "OHIF stand-in" in http.get("/").text
        route = http.get("/viewer?StudyInstanceUIDs=1.2.3")  # a client-side route
        assert route.status_code == 200 and "OHIF stand-in" in route.text
        script = http.get("/app.bundle.js")
        assert script.headers["content-type"] == "text/javascript"
        assert http.get("/codec.wasm").headers["content-type"] == "application/wasm"
        assert http.get("/missing.bundle.js").status_code == 404  # an asset, not the shell
        assert http.get("/%2e%2e/secret.txt").status_code == 404
        assert http.get("/../secret.txt").status_code == 404


def test_app_config_points_at_this_origin(served: tuple[OrthancServer, ViewerServer]) -> None:
    _, viewer = served
    text = httpx.get(f"{viewer.url}/app-config.js").text
    assert text == app_config()
    if shutil.which("node") is None:
        pytest.skip("node is not installed: cannot evaluate the generated JavaScript")
    script = (
        "globalThis.window = {location: {origin: 'http://viewer.test:3000'}};\n"
        f"{text}\nprocess.stdout.write(JSON.stringify(window.config));"
    )
    result = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True)
    config = json.loads(result.stdout)
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    settings = source["configuration"]
    assert settings["qidoRoot"] == settings["wadoRoot"] == "http://viewer.test:3000/dicom-web"
    assert settings["imageRendering"] == settings["thumbnailRendering"] == "wadors"
    assert settings["qidoSupportsIncludeField"] is False
    assert settings["bulkDataURI"] == {"enabled": True, "relativeResolution": "studies"}


def test_dicomweb_is_proxied_to_orthanc(served: tuple[OrthancServer, ViewerServer]) -> None:
    pacs, viewer = served
    (ct,), _ = make_chest_ct(n_slices=1, rows=32, columns=32, seed=5)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ct, enforce_file_format=True)
    study = str(ct.StudyInstanceUID)
    boundary = "ainode-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with httpx.Client(base_url=viewer.url, timeout=30) as http:
        stored = http.post(  # STOW-RS through the proxy
            "/dicom-web/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        assert stored.status_code == 200, stored.text
        assert lookup_study(pacs.client, study) is not None

        found = http.get("/dicom-web/studies", params={"StudyInstanceUID": study})
        assert found.status_code == 200
        assert [s["0020000D"]["Value"] for s in found.json()] == [[study]]

        # Orthanc writes absolute bulk data URIs from the Host it was asked on: this origin.
        (metadata,) = http.get(f"/dicom-web/studies/{study}/metadata").json()
        assert metadata["7FE00010"]["BulkDataURI"].startswith(f"{viewer.url}/dicom-web/")

        frame = http.get(
            f"/dicom-web/studies/{study}/series/{ct.SeriesInstanceUID}"
            f"/instances/{ct.SOPInstanceUID}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 200
        assert len(frame.content) >= 32 * 32 * 2
        assert http.get("/dicom-web/studies/1.2.3.4/metadata").status_code == 404


def test_proxy_answers_502_when_orthanc_is_gone(dist: Path) -> None:
    with OrthancServer() as pacs:
        url = pacs.url
    with ViewerServer(dist, url) as viewer:
        assert httpx.get(f"{viewer.url}/dicom-web/studies").status_code == 502


def test_missing_dist_names_the_install_command(tmp_path: Path) -> None:
    assert not is_installed(tmp_path)
    with pytest.raises(OhifInstallError, match=r"python -m tools\.viewer\.ohif"):
        require_installed(tmp_path)
