"""Order of this folder's tests on a GPU: the slow ones (``@pytest.mark.slow``: inductor, the
fused-dq sweep, CUDA graphs, ``opcheck``; each compiles many kernel variants) first, each
followed by a fast one.

benchmarks/run_gpu_kernels.sh runs them under pytest-xdist, whose default (``--dist load``)
scheduler hands every worker two consecutive tests to start with. Interleaved, each worker
starts one slow test at once instead of two workers ending the run on them (the first H200 run
of the custom op ran out of its time limit on two such tests). Without a GPU the slow ones are
the interpreter's and the order is left alone.
"""

import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        return
    here = __file__.rsplit("/", 1)[0]
    mine = [str(it.path).startswith(here) for it in items]
    slow = [it for it, m in zip(items, mine, strict=True) if m and it.get_closest_marker("slow")]
    if not slow:
        return
    ids = {id(it) for it in slow}
    fast = [it for it, m in zip(items, mine, strict=True) if m and id(it) not in ids]
    others = [it for it, m in zip(items, mine, strict=True) if not m]
    order = []
    for i, it in enumerate(slow):
        order += [it, *fast[i:i + 1]]
    items[:] = order + fast[len(slow):] + others
