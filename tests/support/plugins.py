"""Third-party plugin packages installed the way pip leaves them: a ``*.dist-info`` directory
(``METADATA``, ``entry_points.txt``) beside the package's modules, in a directory that goes on
``sys.path``. ``importlib.metadata`` then finds their ``ainode.plugins`` entry points."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from node.orchestration.registry import ENTRY_POINT_GROUP


def write_distribution(
    root: Path,
    name: str,
    entry_points: Mapping[str, str],
    modules: Mapping[str, str],
    version: str = "1.0.0",
) -> Path:
    """Write distribution ``name`` into ``root`` (a future ``sys.path`` entry); return ``root``.

    ``entry_points`` maps entry-point names to targets (``module`` or ``module:attribute``)
    in the group ``ainode.plugins``; ``modules`` maps module names to their source.
    """
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return root


#: A working plugin (labels voxels above 0 HU) as a third-party module would define it.
WORKING_PLUGIN = """
    import numpy as np

    from node.contract.plugin import Accepts, InferencePlugin, Prediction


    class ThirdPartyPlugin(InferencePlugin):
        name = "{name}"
        version = "3.1.4"
        template = "ct_lungs"
        accepts = Accepts(modalities=("CT",))

        def load(self, device):
            self.device = device

        def run(self, volume, context):
            return Prediction(label_map=(volume.array > 0).astype(np.uint8))


    PLUGIN = ThirdPartyPlugin
"""

#: A plugin that imports but whose ``load`` fails (its weights are unreadable).
UNLOADABLE_PLUGIN = """
    from node.contract.plugin import InferencePlugin


    class Unloadable(InferencePlugin):
        name = "{name}"
        version = "0.9.0"
        template = "ct_lungs"

        def load(self, device):
            raise RuntimeError("weights file is truncated")

        def run(self, volume, context):
            raise AssertionError("never loaded")


    PLUGIN = Unloadable
"""

#: A module that cannot be imported (a dependency of the package is missing).
UNIMPORTABLE_MODULE = """
    raise ImportError("this plugin needs the package 'libfoo', which is not installed")
"""
