"""A real Orthanc for tests: a context manager on free ports with its own temp storage.

The implementation lives in :mod:`tools.orthanc` so the demo and the benchmarks
use the same code; tests import it from here.

Examples
--------
::

    with OrthancServer(modalities={"ainode": ["AINODE", "127.0.0.1", node_port]}) as pacs:
        pacs.upload(path)
        study_id = pacs.studies()[0]
        pacs.send_to_modality("ainode", [study_id])
        pacs.wait_for_series(study_uid, ["SEG", "SR"], timeout=120)
"""

from tools.orthanc import (
    BASE_CONFIG,
    DICOMWEB_PLUGIN,
    ORTHANC_BINARY,
    OrthancClient,
    OrthancError,
    OrthancServer,
)

__all__ = [
    "BASE_CONFIG",
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "OrthancClient",
    "OrthancError",
    "OrthancServer",
]
