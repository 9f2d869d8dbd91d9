"""Benchmarks for ainode: DICOM ingest rate and end-to-end latency (``python -m benchmarks``)."""
