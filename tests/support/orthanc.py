"""A real Orthanc for tests: a context manager on free ports with its own temp storage.

The implementation lives in :mod:`tools.orthanc` (the launcher) and
:mod:`tools.orthanc_rest` (helpers over its pyorthanc client) so the demo and the
benchmarks use the same code; tests import it from there or from here.

Examples
--------
::

    with OrthancServer(modalities={"ainode": ["AINODE", "127.0.0.1", node_port]}) as pacs:
        upload(pacs.client, path)
        study_id = pacs.client.get_studies()[0]
        send_to_modality(pacs.client, "ainode", [study_id])
        wait_for_series(pacs.client, study_uid, ["SEG", "SR"], timeout=120)
"""

from tools.orthanc import (
    BASE_CONFIG,
    DICOMWEB_PLUGIN,
    ORTHANC_BINARY,
    OrthancError,
    OrthancServer,
)

__all__ = [
    "BASE_CONFIG",
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "OrthancError",
    "OrthancServer",
]
