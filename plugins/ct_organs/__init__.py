"""``ct_organs``: demonstration multi-organ CT segmentation (a small MONAI UNet).

Trained on synthetic phantoms only (``train.py``); not for clinical use.
"""

from plugins.ct_organs.plugin import CtOrgansPlugin

PLUGIN = CtOrgansPlugin

__all__ = ["PLUGIN", "CtOrgansPlugin"]
