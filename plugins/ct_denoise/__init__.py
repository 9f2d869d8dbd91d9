"""``ct_denoise``: demonstration CT denoising (a tiny residual MONAI UNet, image-to-image).

Trained on synthetic phantoms only (``train.py``); not for clinical use.
"""

from plugins.ct_denoise.plugin import CtDenoisePlugin

PLUGIN = CtDenoisePlugin

__all__ = ["PLUGIN", "CtDenoisePlugin"]
