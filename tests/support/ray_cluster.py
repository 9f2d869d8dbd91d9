"""Ray for tests: a local Ray started in the test process, and the multi-process cluster.

:func:`local_ray` is ``ray.init`` with its own short temporary directory, this checkout on
the workers' path and token authentication off (the unit tests of the executor);
:class:`~tools.ray_cluster.RayCluster` is the real cluster of separate ``ray start``
processes (the end-to-end tests kill one of its workers). Both stop what they start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import ray

from tools.ray_cluster import RayCluster, ray_environment

__all__ = ["RayCluster", "local_ray"]


@contextmanager
def local_ray(num_cpus: int = 2, resources: Mapping[str, float] | None = None) -> Iterator[None]:
    """``ray.init`` of a fresh local Ray in this process (stopped at the end)."""
    assert not ray.is_initialized(), "a Ray is already running in this process"
    saved = dict(os.environ)
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    os.environ.update(ray_environment())  # inherited by the local raylet and its workers
    try:
        ray.init(
            num_cpus=num_cpus,
            resources=dict(resources or {}),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _temp_dir=str(temp),
            namespace="ainode-test",
        )
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp, ignore_errors=True)
