"""Development tools, beside the service and not in its wheel.

Synthetic DICOM (:mod:`tools.synthetic`), a local Orthanc and node subprocess
(:mod:`tools.orthanc`, :mod:`tools.node_process`), the demo and the OHIF viewer
(``make demo``, ``make viewer``), the routines' training scripts (:mod:`tools.training`),
the template linter and the evaluation example dataset. Tests and benchmarks build on
them; nothing in ``node/`` imports them (``lint-imports`` checks it).
"""
