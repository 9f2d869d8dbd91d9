"""Segmentation IODs: BINARY, LABELMAP and FRACTIONAL SEG of a label map."""
