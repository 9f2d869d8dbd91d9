"""``mg_mass_detector``: demonstration mammogram mass detector (MONAI UNet, centre points).

Trained on synthetic mammograms only (``train.py``); not for clinical use.
"""

from plugins.mg_mass_detector.plugin import MgMassDetectorPlugin

PLUGIN = MgMassDetectorPlugin

__all__ = ["PLUGIN", "MgMassDetectorPlugin"]
