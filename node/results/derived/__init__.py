"""Derived images of image-to-image routines: a series of the source's IOD and its SC copy."""
