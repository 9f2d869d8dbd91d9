"""Orchestration: series arrive (ingest), complete (quiet period), are routed to jobs
(dispatch), and jobs run (gate, priors, plugin registry, worker); retention runs here too.

Sits above the engine, the result builders and the state stores; below the network edges,
the API and the CLI.
"""
