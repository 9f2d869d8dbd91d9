"""Model runtime: series → Volume, plugin contract, workers."""
