"""``op_fundus_classifier``: demonstration fundus-photograph classifier (small MONAI-block CNN).

Trained on synthetic photographs only (``train.py``); not for clinical use.
"""

from plugins.op_fundus_classifier.plugin import OpFundusClassifierPlugin

PLUGIN = OpFundusClassifierPlugin

__all__ = ["PLUGIN", "OpFundusClassifierPlugin"]
