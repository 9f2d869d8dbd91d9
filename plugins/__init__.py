"""Inference routines, one sub-package per routine."""
