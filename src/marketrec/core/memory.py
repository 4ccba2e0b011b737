"""Keep freed memory in the process for reuse (glibc's allocator), for training loops.

A training step allocates and frees the same few tensors of several megabytes every batch
(ml-100k: the (1,024 × 1,682) logits and their masks, the (1,024 × 20 × 64) history tokens
and their gradients). glibc serves blocks above its mmap threshold with fresh mappings and
returns freed memory at the top of the heap to the system once more than the trim threshold
is free, so every step touched its temporaries' pages anew. Raising both thresholds keeps
those blocks in the heap, so later steps reuse them. Measured side by side on ml-100k: a
4-epoch two-tower fit (2 threads) took 130,000 page faults instead of 830,000 and 1.1 s of
system time instead of 4.1 s; steps alone on one thread ran 10-15 % faster.

Process-wide and for the life of the process: the resident size stays at its high-water mark
up to `trim_mb` of free memory, which a training process wants and a small serving process
can afford. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@cache
def keep_freed_memory(mmap_mb: int = 32, trim_mb: int = 512) -> bool:
    """Blocks up to `mmap_mb` come from the heap, and up to `trim_mb` of free heap stays
    mapped; True when the C library took both settings (glibc), False elsewhere. Applied
    once per process: later calls return the first call's answer."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took = bool(mallopt(_M_MMAP_THRESHOLD, mmap_mb << 20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_mb << 20)
    )
    log.debug("freed memory kept for reuse: %s", took)
    return took
