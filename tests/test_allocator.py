"""laser.allocator: large tensors come from glibc's heap, where freed blocks stay for reuse, not from a fresh mmap
each (whose pages fault in and are zeroed on every allocation)."""

import os
import subprocess
import sys

import pytest

from laser import allocator

IN_HEAP = """
import torch
{imports}
x = torch.empty(16_000_000)                  # 64 MB: above the 32 MiB ceiling of glibc's own mmap threshold
address = x.data_ptr()
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
        print(lo <= address < hi)
        break
else:
    print(False)
"""


def large_block_in_heap(imports: str, **env: str) -> bool:
    """Whether a fresh interpreter serves a 64 MB tensor from the heap (True) or from its own mapping."""
    out = subprocess.run([sys.executable, "-c", IN_HEAP.format(imports=imports)], capture_output=True, text=True,
                         check=True, env={**os.environ, **env})
    return out.stdout.split()[-1] == "True"


glibc = pytest.mark.skipif(allocator._glibc() is None, reason="glibc on Linux only")


@glibc
def test_applied_where_glibc_is():
    assert allocator.keep_freed_memory()


@glibc
def test_import_keeps_large_blocks_in_the_heap():
    assert large_block_in_heap("import laser")
    # glibc's default: its own mapping, which is what made every such allocation fault in fresh pages.
    assert not large_block_in_heap("")


@glibc
def test_switched_off_by_the_environment():
    assert not large_block_in_heap("import laser", LASER_KEEP_FREED_MEMORY="0")


RESIDENT_AFTER_RELEASE = """
import resource, torch
import laser
from laser.allocator import release_freed_memory
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
x = torch.empty(32_000_000).fill_(1.0)       # 128 MB from the heap
del x
kept = resident_mb()
release_freed_memory()
print(kept - resident_mb())
"""


@glibc
def test_release_hands_freed_heap_memory_back():
    out = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_RELEASE], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) > 100           # MB: the freed 128 MB block left the resident set
