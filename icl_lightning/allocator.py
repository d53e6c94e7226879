"""The C allocator's settings for a training process: freed memory kept for the next step.

A CPU training step allocates its activations and gradients afresh (a GPT-2 block's MLP
activations at Garg et al.'s set-up are 10 MB each) and frees them by the step's end. glibc's
``malloc`` hands blocks that large to the kernel with ``mmap`` and back with ``munmap``, or trims
the top of its heap, so the next step touches new pages: a page fault per 4 KB, thousands a
step (about 6,500 - 16,000 for the small GPT-2, 2 - 5 % of its step in system time). As the
PyTorch CPU tuning guide's advice to use jemalloc or TCMalloc, :func:`keep_freed_memory` keeps
freed memory in the process for reuse: blocks under 32 MB come from the heap
(``M_MMAP_THRESHOLD``) and the heap is never trimmed below 1 GB of free space at its top
(``M_TRIM_THRESHOLD``). The process's resident memory then stays near its peak, as a GPU
caching allocator's does. ``icl-lightning`` and the benchmarks call it at start
(:func:`~icl_lightning.cli.run_process`).
"""

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` to 32 MB and ``M_TRIM_THRESHOLD`` to 1 GB (module
    docstring); whether it could (``False`` where the C library is not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    set_mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(set_mmap and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
