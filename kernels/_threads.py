"""numba's thread count kept equal to torch's (private; used by the numba kernels' front ends)."""

from __future__ import annotations

import torch

__all__ = ["follow_torch"]


def follow_torch() -> int:
    """Set numba's thread count to torch's (``torch.set_num_threads``), within numba's pool size; return it.

    numba's OpenMP pool runs on the OpenMP runtime torch loaded into the global symbol scope, and launching it
    (numba's first parallel call or thread-count query) sets that runtime's thread count to numba's pool size,
    i.e. torch's own count. That count is put back, so a ``torch.set_num_threads(1)`` made before the first
    numba call still holds after it.
    """
    import numba

    torch_threads = torch.get_num_threads()
    want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return want
