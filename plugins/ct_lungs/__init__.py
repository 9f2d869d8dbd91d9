"""``ct_lungs``: right and left lung segmentation of chest CT from Hounsfield units."""

from plugins.ct_lungs.plugin import CtLungsPlugin

PLUGIN = CtLungsPlugin

__all__ = ["PLUGIN", "CtLungsPlugin"]
