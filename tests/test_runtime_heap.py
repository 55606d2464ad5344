"""The served gateway's heap settling (runtime.settle_heap): start-up objects frozen, later garbage still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import gc, weakref
    from mcp_hub.runtime import GC_THRESHOLD, settle_heap

    class Node:
        pass

    settle_heap()
    assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
    assert gc.get_threshold()[0] == GC_THRESHOLD
    cycle = Node()
    cycle.self = cycle
    ref = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert ref() is None, "a cycle made after start-up was not collected"
    print("ok")
""")


def test_settle_heap_freezes_start_up_objects_and_still_collects_later_cycles() -> None:
    # in a process of its own: freezing is for the life of the process
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
