"""Secondary Captures: burned-in overlays of segments, findings and attribution heat maps."""
