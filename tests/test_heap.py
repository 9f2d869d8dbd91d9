"""node.heap.settle: start-up objects frozen, full collections spaced out, garbage still
collected (each case in a fresh interpreter: the collector's state is per process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from node.heap import OLDEST_THRESHOLD


def run_python(code: str) -> str:
    answer = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return answer.stdout.strip()


def test_settle_freezes_what_lives_and_spaces_out_full_collections() -> None:
    out = run_python(
        """
        import gc
        from node.heap import settle
        kept = [[i] for i in range(50_000)]
        before = len(gc.get_objects())
        frozen = settle()
        print(frozen >= 50_000, gc.get_freeze_count() == frozen, frozen >= before // 2)
        print(len(gc.get_objects()) < 1_000, gc.get_threshold()[2])
        """
    )
    assert out.splitlines() == ["True True True", f"True {OLDEST_THRESHOLD}"]


def test_cycles_made_before_and_after_settling_are_still_collected() -> None:
    out = run_python(
        """
        import gc, weakref
        from node.heap import settle

        class Node:
            pass

        def cycle():
            a, b = Node(), Node()
            a.other, b.other = b, a
            return weakref.ref(a)

        before = cycle()  # garbage already: settle's own collection frees it
        settle()
        print(before() is None)
        after = cycle()
        print(after() is not None)  # a cycle waits for the collector
        gc.collect()
        print(after() is None)
        """
    )
    assert out.splitlines() == ["True", "True", "True"]
