"""Development tools: a local Orthanc, a node subprocess, the demo.

Not used by the node at run time; tests, benchmarks and ``make demo`` build on them.
"""
