"""Spatial Registration of a prior series to the current one."""
