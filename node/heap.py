"""The cyclic garbage collector of a long-running node process, once it has started.

A started node holds about 650,000 objects the collector tracks (torch, MONAI,
highdicom, pydicom's dictionaries, the loaded routines; 400,000 of them from the imports
alone), none of which it will ever free. Each full collection walks all of them: about
0.2 s with the GIL held, stalling the DICOM receive, the API and every job. CPython runs
one whenever the objects that survived since the last one reach a quarter of that count,
which a 1000-slice job's headers and results do 1 to 3 times (0.2-0.7 s of a job's time).

:func:`settle` collects once, then moves every object alive at that point to the
collector's permanent generation (:func:`gc.freeze`, as CPython's documentation suggests
for long-lived servers), so later full collections walk only what was made since. It
also runs them less often (:data:`OLDEST_THRESHOLD`): with the start-up objects out of
the count, the quarter rule alone would fire on every few thousand survivors.
Acyclic objects are freed by their reference counts as before; only reference cycles
among the objects frozen here would never be collected, and those are what lives for the
whole process anyway.

The node's process entry point calls it once the routines have loaded
(``ainode serve``), and so does each Ray actor once its routine has loaded
(:class:`~node.orchestration.ray_actor.RoutineHost`); a :class:`~node.app.Node` made in
some other process (tests, tools) leaves that process's collector alone.
"""

from __future__ import annotations

import gc

#: Full collections run after this many collections of the middle generation (CPython's
#: default is 10): about 700,000 surviving allocations instead of 70,000.
OLDEST_THRESHOLD = 100


def settle() -> int:
    """Collect, freeze what is left, and space out full collections.

    Returns
    -------
    int
        Objects now in the permanent generation (:func:`gc.get_freeze_count`).
    """
    gc.collect()
    gc.freeze()
    first, middle, _ = gc.get_threshold()
    gc.set_threshold(first, middle, OLDEST_THRESHOLD)
    return gc.get_freeze_count()
