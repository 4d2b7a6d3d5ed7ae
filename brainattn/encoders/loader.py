"""Mini-batches of (tokens, targets) from arrays and memory maps, reproducible per epoch, with
the rows held where training runs: :class:`ArrayLoader` stages them once on the GPU (read by a
few threads into pinned buffers, :func:`stage_on_device`), or in host memory, or streams them
from the memory map through a prefetch thread. Shards of each batch go to the ranks of a
data-parallel fit (:mod:`brainattn.encoders.distributed`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from brainattn.errors import ConfigError


class ArrayLoader:
    """Mini-batches of (features, targets) from arrays, reproducible per epoch.

    Parameters
    ----------
    X : (N, L, C) array or memmap (float16/32); rows ``indices`` are used.
    Y : (N, V) float array or tensor (z-scored targets; a tensor stays on its device) or None
        (prediction only).
    indices : int array of the rows to iterate over.
    batch_size : the *global* batch: with ``world_size`` processes each takes
        ``batch_size // world_size`` rows of every batch (see :meth:`shard`).
    shuffle : reshuffle every epoch with ``seed + epoch`` (set by :meth:`set_epoch`).
    rank, world_size : this process's shard of every batch (data parallelism).
    device : where batches go (float32).
    preload : where the selected rows are held as float16: ``"gpu"`` (on the CUDA device: no
        host-to-device copy per batch), ``True``/``"cpu"`` (host memory), ``False`` (read from
        the array/memmap per batch; on CUDA through pinned buffers by a prefetch thread,
        ``prefetch`` batches ahead, copied on a side stream). Default: GPU when the rows take
        less than half of the free GPU memory, else host memory when < 2 GB, else streamed.
    """

    def __init__(self, X, Y, indices, *, batch_size: int = 16, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device="cpu",
                 preload: bool | str | None = None, prefetch: int = 3):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: expected a positive integer")
        self.shuffle = shuffle
        self.seed = int(seed)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # compare devices exactly
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.prefetch = max(1, int(prefetch))
        self.epoch = 0
        self.shard(rank, world_size)
        nbytes = len(self.indices) * int(np.prod(X.shape[1:])) * 2
        if preload is None:
            preload = "cpu" if nbytes < (2 << 30) else False
            if self.device.type == "cuda":
                free = torch.cuda.mem_get_info(self.device)[0]
                preload = "gpu" if nbytes < free // 2 else preload
        self.where = {True: "cpu", False: "stream"}.get(preload, preload)
        if self.where not in ("gpu", "cpu", "stream"):
            raise ConfigError(f"preload {preload!r}: expected 'gpu', 'cpu', True, False or None")
        if self.where == "stream":
            self._X = X
        elif self.where == "gpu":
            self._X = stage_on_device(X, self.indices, self.device)
        else:
            self._X = torch.empty((len(self.indices), *X.shape[1:]), dtype=torch.float16)
            for s in range(0, len(self.indices), 256):  # chunked: no second full host copy
                self._X[s : s + 256] = self._read(X, self.indices[s : s + 256])
        self._local = self.where != "stream"
        if Y is None:
            self._Y = None
        elif torch.is_tensor(Y):  # already staged (e.g. on the device): indexed where it is
            self._Y = Y[torch.as_tensor(self.indices, device=Y.device)].float()
        else:
            self._Y = torch.as_tensor(np.asarray(Y)[self.indices], dtype=torch.float32)
        self._Yd = None if self._Y is None else self._Y.to(self.device)

    def resident(self) -> torch.Tensor | None:
        """The selected rows as held (float16, (len(indices), ...), on the device or in host
        memory), or None when they are streamed from the array."""
        return self._X if self._local else None

    @staticmethod
    def _read(X, rows, out=None) -> torch.Tensor:
        """float16 rows of ``X`` in the order given (sorted reads from a memmap)."""
        srt = np.argsort(rows)
        xb = np.empty((len(rows), *X.shape[1:]), dtype=np.float16) if out is None else out
        xb[srt] = np.asarray(X[rows[srt]], dtype=np.float16)
        return torch.from_numpy(xb)

    def shard(self, rank: int, world_size: int) -> None:
        """Take shard ``rank`` of ``world_size`` of every global batch (equal shards in
        training; see :func:`brainattn.encoders.distributed.shard_positions`)."""
        from brainattn.encoders.distributed import check_batch_divisible

        if world_size > 1 and self.shuffle:
            check_batch_divisible(self.batch_size, world_size)
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> np.ndarray:
        n = len(self.indices)
        pos = np.arange(n)
        if self.shuffle:
            pos = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return pos

    def batches(self) -> list[np.ndarray]:
        """This rank's positions (into ``indices``) of every batch of the epoch."""
        from brainattn.encoders.distributed import shard_positions

        order = self._order()
        out = [shard_positions(order[s : s + self.batch_size], self.rank, self.world_size,
                               drop_uneven=self.shuffle)
               for s in range(0, len(order), self.batch_size)]
        # empty shards are skipped (training shards are equal: every rank keeps the same count)
        return [b for b in out if len(b)]

    def __len__(self) -> int:
        return len(self.batches())

    def _host_batch(self, pos):
        rows = self.indices[pos]
        if self.device.type == "cuda":  # the pinned tensor itself travels (its allocator
            # keeps the block until the async copy is done)
            buf = torch.empty((len(rows), *self._X.shape[1:]), dtype=torch.float16,
                              pin_memory=True)
            self._read(self._X, rows, buf.numpy())
            return buf
        return self._read(self._X, rows)

    def _streamed(self, batches):
        """Prefetch thread: memmap rows -> (pinned) host buffer -> device on a side stream."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None
        stop = threading.Event()

        def work():
            try:
                for pos in batches:
                    if stop.is_set():
                        return
                    x = self._host_batch(pos)
                    ev = None
                    if cuda:
                        with torch.cuda.stream(side):
                            x = x.to(self.device, non_blocking=True)
                            ev = torch.cuda.Event()
                            ev.record(side)
                    q.put((pos, x, ev))
                q.put(None)
            except BaseException as exc:  # hand errors to the consumer
                q.put(exc)

        th = threading.Thread(target=work, daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                pos, x, ev = item
                if ev is not None:
                    torch.cuda.current_stream(self.device).wait_event(ev)
                    x.record_stream(torch.cuda.current_stream(self.device))
                yield pos, x
        finally:
            stop.set()
            while th.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    th.join(0.01)

    def __iter__(self):
        batches = self.batches()
        # one host-to-device copy of the epoch's positions (a per-batch copy of a pageable
        # index array would synchronise the stream every step)
        flat = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, np.int64))
        dpos = flat.to(self.device)
        ends = np.cumsum([len(b) for b in batches])
        if self._local:
            xpos = dpos if self._X.device == self.device else flat
            src = ((b, self._X[xpos[e - len(b) : e]]) for b, e in zip(batches, ends, strict=True))
        else:
            src = self._streamed(batches)
        for (pos, x), e in zip(src, ends, strict=True):
            x = x.to(self.device, non_blocking=True).float()
            y = None if self._Yd is None else self._Yd[dpos[e - len(pos) : e]]
            yield x, y


def _take_rows(base, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = base[rows]`` (float16), in one copy: a slice for a run of consecutive rows,
    ``np.take`` (which releases the GIL) for other rows of an array or memory map."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
        out[...] = base[int(rows[0]) : int(rows[-1]) + 1]
    elif isinstance(base, np.ndarray) and base.dtype == out.dtype:
        np.take(base, rows, axis=0, out=out, mode="clip")  # "raise" would buffer a copy
    else:
        out[...] = np.asarray(base[rows])


def stage_on_device(X, indices: np.ndarray, device, *, chunk: int = 128,
                     workers: int = 4) -> torch.Tensor:
    """Rows ``indices`` of ``X`` (array, memory map or :class:`~brainattn.encoders.cache.Rows`
    view) as one float16 tensor on ``device`` (a CUDA device; the CPU for tests): ``workers`` threads each read a chunk
    into their own pinned buffer and copy it on their own stream, so reading the host memory
    (or the page cache of a memory map) overlaps the host-to-device copies."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from brainattn.encoders.cache import Rows

    base, rows_all = (X.base, X.index[indices]) if isinstance(X, Rows) else (X, indices)
    n = len(rows_all)
    out = torch.empty((n, *X.shape[1:]), dtype=torch.float16, device=device)
    workers = max(1, min(workers, -(-n // chunk)))
    cuda = torch.device(device).type == "cuda"
    bufs = [torch.empty((chunk, *X.shape[1:]), dtype=torch.float16, pin_memory=cuda)
            for _ in range(workers)]
    streams = [torch.cuda.Stream(device) if cuda else None for _ in range(workers)]
    free: queue.Queue = queue.Queue()
    for i in range(workers):
        free.put(i)

    def job(s):
        i = free.get()
        try:
            rows = np.asarray(rows_all[s : s + chunk])
            order = np.argsort(rows, kind="stable")  # sorted reads from a memory map
            m = len(rows)
            _take_rows(base, rows[order], bufs[i][:m].numpy())
            with torch.cuda.stream(streams[i]) if cuda else contextlib.nullcontext():
                dst = out[s : s + m]
                if (order == np.arange(m)).all():
                    dst.copy_(bufs[i][:m], non_blocking=cuda)
                else:
                    dst[torch.as_tensor(order, device=device)] = bufs[i][:m].to(
                        device, non_blocking=cuda)
            if cuda:
                streams[i].synchronize()  # the buffer is free again once its copy is done
        finally:
            free.put(i)

    if cuda:
        torch.cuda.current_stream(device).synchronize()  # ``out`` exists before side streams
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(job, range(0, n, chunk)))
    return out
