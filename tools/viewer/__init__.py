"""OHIF v3 in front of a development Orthanc: install, serve, drive headless.

* :mod:`.ohif` installs the pinned prebuilt viewer (``@ohif/app`` ``dist/``) into an
  ignored directory (``python -m tools.viewer.ohif``).
* :mod:`.server` serves it and proxies ``/dicom-web`` to Orthanc on one origin.
* :mod:`.browser` drives Debian's chromium with Playwright (tests, screenshots).
* ``python -m tools.viewer`` (``make viewer``) opens OHIF on the dev Orthanc.
"""
