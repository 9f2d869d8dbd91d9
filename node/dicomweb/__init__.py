"""DICOMweb: the node's STOW-RS receiver and its client side (QIDO/WADO/STOW-RS)."""
