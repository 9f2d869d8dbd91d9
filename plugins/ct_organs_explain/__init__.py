"""``ct_organs_explain``: ``ct_organs`` plus a Grad-CAM map of its liver output.

The same demonstration network and template as :mod:`plugins.ct_organs`; the
prediction also carries a segmentation-aware Grad-CAM (MONAI) of the liver channel,
which destinations receive as a Parametric Map (``pmap``) or heat-map Secondary
Capture (``heatmap_sc``). Opt in by routing a rule to this plugin instead of
``ct_organs``: the map costs an extra forward and backward pass. Not for clinical use.
"""

from plugins.ct_organs.model import LABELS
from plugins.ct_organs.plugin import CtOrgansPlugin


class CtOrgansExplainPlugin(CtOrgansPlugin):
    """``ct_organs`` with a Grad-CAM of the liver channel in every prediction."""

    name = "ct_organs_explain"
    explain_label = LABELS.index("liver")


PLUGIN = CtOrgansExplainPlugin

__all__ = ["PLUGIN", "CtOrgansExplainPlugin"]
