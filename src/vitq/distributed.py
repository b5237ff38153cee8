"""Data-parallel runs on ``torch.distributed``, launched by ``torchrun``: the few collectives vitq needs.

Every function here is a no-op (or the identity) in a single process, so library code calls them
unconditionally. Under ``torchrun --nproc-per-node N -m vitq ...`` each rank holds the whole model and
a contiguous shard of the images (:func:`shard_range`); the calibration statistics that sum or take
extremes over images are combined across ranks so that every rank chooses the same intervals as one
process on all the images.

Two kinds of reduction:

- **Plain collectives** (:func:`all_reduce_sum`, :func:`all_reduce_max`, :func:`all_reduce_grads`,
  :func:`all_gather_rows`, :func:`broadcast_object`, :func:`barrier`): always combine the ranks when a
  process group is up.
- **Shard statistics** (:func:`shard_sum`, :func:`shard_max`, :func:`shard_min`, :func:`shard_count`,
  :func:`shard_rows`): combine the ranks only inside :func:`sharded` (``with sharded(): ...``), the
  scope in which the data a function sees is this rank's shard of the images. The calibration engine
  opens it; code outside it (evaluation on replicated data, weight statistics in mixed precision) sees
  local values, so a sum over replicated data is never multiplied by the number of ranks.

Failures. A rank that raises posts its error to the rendezvous store (:func:`report_failure`, called by
the ``vitq`` command line) before it exits; a rank whose collective then breaks (the peer's sockets
closed) or times out (``timeout_s``, :func:`init_from_env`) reads the store and raises one
:class:`DistributedError` naming the rank that failed, or, when none posted, the ranks that never
reached the collective (hung, or killed without a message). Outputs are written by rank 0 only
(:func:`main_first`), after a barrier that every rank reaches only when its own work succeeded.

Communication is counted (:data:`COMM`: collectives, bytes, seconds spent in them) for the benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch

from vitq.errors import VitqError

log = logging.getLogger(__name__)

#: default seconds a collective waits for the slowest rank before the run is stopped as hung
DEFAULT_TIMEOUT_S = 600.0
#: seconds a rank whose collective broke waits for the other ranks' posts before it explains the failure
_GRACE_S = 5.0


class DistributedError(VitqError):
    """A data-parallel run stopped: another rank failed (``failed_rank``), or some ranks did not reach a
    collective in time (``missing_ranks``)."""

    def __init__(self, message: str, *, failed_rank: int | None = None, missing_ranks: Sequence[int] = ()):
        super().__init__(message)
        self.failed_rank = failed_rank
        self.missing_ranks = tuple(missing_ranks)

    @property
    def from_peer(self) -> bool:
        """The error started on another rank, which reported it itself."""
        return self.failed_rank is not None and self.failed_rank != rank()


@dataclass
class CommStats:
    """What this rank's collectives cost: count, payload bytes (as sent by this rank) and wall seconds
    spent inside them (waiting for slower ranks included)."""

    collectives: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.collectives, self.bytes, self.seconds = 0, 0, 0.0

    def as_dict(self) -> dict:
        return {"collectives": self.collectives, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


COMM = CommStats()

_sharded: ContextVar[bool] = ContextVar("vitq_sharded", default=False)
_seq = 0  # collectives entered by this rank (the same sequence on every rank)
_timeout_s = DEFAULT_TIMEOUT_S
_owned = False  # the process group was created by init_from_env


# -- who am I ------------------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """A process group with more than one rank is up."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return _dist().get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, the one that writes outputs (always true in one process)."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise VitqError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from e


def local_device(device: str = "cpu") -> torch.device:
    """The torch device of this rank: ``cpu``, or ``cuda:LOCAL_RANK`` for ``device="cuda"`` (one GPU per rank)."""
    if device == "cpu":
        return torch.device("cpu")
    if device != "cuda" and not device.startswith("cuda:"):
        raise VitqError(f"--device {device!r}: choose cpu or cuda")
    if not torch.cuda.is_available():
        raise VitqError(f"--device {device}: CUDA is not available on this machine")
    if device == "cuda" and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device(device)


def init_from_env(device: str = "cpu", timeout_s: float | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ...):
    backend ``gloo`` on CPU, ``nccl`` on CUDA; every collective waits at most ``timeout_s`` seconds
    (default :data:`DEFAULT_TIMEOUT_S`, or ``VITQ_DIST_TIMEOUT``). Returns False (and does nothing) when
    ``WORLD_SIZE`` is unset or 1, or a group is already up (then its settings stay)."""
    global _owned, _timeout_s
    if env_world_size() <= 1:
        return False
    dist = _dist()
    if dist.is_initialized():
        return False
    if timeout_s is None:
        timeout_s = float(os.environ.get("VITQ_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if timeout_s <= 0:
        raise VitqError(f"distributed timeout {timeout_s!r} s must be positive")
    dev = local_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _timeout_s, _owned = timeout_s, True
    log.info("rank %d of %d joined (%s, timeout %gs)", rank(), world_size(), backend, timeout_s)
    return True


def shutdown() -> None:
    """Leave the process group :func:`init_from_env` created (no-op otherwise)."""
    global _owned
    if _owned and _dist().is_initialized():
        _dist().destroy_process_group()
    _owned = False


def exit_process(code: int) -> NoReturn:
    """End a rank's process once its work is done and written: flush the streams and the log, then
    ``os._exit(code)``, skipping interpreter finalization. There the backend's C++ threads and the objects
    they hold can be torn down in any order, and one CI run saw rank 0 abort (``terminate called without
    an active exception``, exit -6) after it had destroyed the process group and saved its outputs; the
    launcher then reports the whole run failed. Nothing of vitq's needs finalization: outputs are written
    atomically before this, and the process group is already destroyed (:func:`shutdown`)."""
    shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing left to flush into
            pass
    os._exit(code)


# -- sharding ------------------------------------------------------------------------------------------
def shard_range(n: int, world: int | None = None, at: int | None = None) -> range:
    """The contiguous block of indices ``0..n-1`` of rank ``at`` (default: this rank) among ``world`` ranks:
    the first ``n % world`` ranks get one more. Concatenated in rank order the blocks are ``range(n)``,
    which is how gathered per-image results come back in the single-process order."""
    world = world_size() if world is None else world
    at = rank() if at is None else at
    base, extra = divmod(n, world)
    start = at * base + min(at, extra)
    return range(start, start + base + (at < extra))


def shard_indices(n: int) -> range:
    """This rank's indices of ``n`` images (:func:`shard_range`); every index in one process."""
    return shard_range(n)


def shard_positions(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Positions in this rank's shard of the entries of ``indices`` (global sample indices in ``0..n-1``, the
    same on every rank, e.g. a minibatch drawn from a generator seeded alike) that fall in the shard. A
    minibatch loss summed over these rows on every rank, and normalised by ``len(indices)``, adds up over
    ranks to the single-process minibatch loss (with :func:`all_reduce_grads` for its gradient)."""
    r = shard_range(n)
    mine = indices[(indices >= r.start) & (indices < r.stop)]
    return mine - r.start


def shard(t: torch.Tensor, what: str = "images") -> torch.Tensor:
    """This rank's rows of ``t`` (``t`` itself in one process). Every rank must get at least one row."""
    if not is_distributed():
        return t
    if t.shape[0] < world_size():
        raise VitqError(f"{t.shape[0]} {what} cannot be split over {world_size()} ranks: give at least one per rank")
    r = shard_range(t.shape[0])
    return t[r.start: r.stop]


def check_same_model(model: torch.nn.Module, what: str = "the float model") -> None:
    """Every rank holds the same weights (a hash of the state dict, gathered): a random-init model built
    without a seed, or a checkpoint that differs between machines, is refused before any work."""
    if not is_distributed():
        return
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests = all_gather_object(h.hexdigest())
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        msg = (f"{what} differs between ranks 0 and {odd}: every rank must load the same weights "
               "(a checkpoint, or a seeded initialisation)")
        # one message: rank 0's; the others stop quietly as after any peer's failure
        raise VitqError(msg) if is_main() else DistributedError(msg, failed_rank=0)


# -- failure handling ----------------------------------------------------------------------------------
def _store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # no store (a group created without one): errors are explained less precisely
        return None


def _key(kind: str, r: int) -> str:
    return f"vitq/{kind}/{r}"


def report_failure(exc: BaseException) -> None:
    """Post this rank's error for the other ranks (their next collective fails when this process exits).
    A :class:`DistributedError` caught from a peer is not re-posted. Never raises."""
    if not is_distributed() or (isinstance(exc, DistributedError) and exc.failed_rank is not None):
        return
    store = _store()
    if store is None:
        return
    text = " ".join((str(exc).strip() or type(exc).__name__).split())
    try:
        store.set(_key("failed", rank()), f"{type(exc).__name__}: {text}"[:2000])
    except Exception:  # the store's host is gone: the peers explain the failure without the message
        pass


def _explain(what: str, exc: BaseException) -> DistributedError:
    """Why collective number ``_seq`` (``what``) broke on this rank: a peer's posted failure, else the
    ranks that never reached it."""
    store, me, world = _store(), rank(), world_size()
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if store is None:
        return DistributedError(f"collective #{_seq} ({what}) failed on rank {me} of {world}: {first}")
    posted: set[int] = set()
    failed: list[int] = []
    try:
        store.set(_key("at", me), str(_seq))
        deadline = time.monotonic() + min(_GRACE_S, _timeout_s)
        while True:
            failed = [r for r in range(world) if store.check([_key("failed", r)])]
            posted = {r for r in range(world) if store.check([_key("at", r)])}
            if failed or len(posted) == world or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if failed:
            r = failed[0]
            msg = store.get(_key("failed", r)).decode(errors="replace")
            return DistributedError(f"rank {r} of {world} failed: {msg}", failed_rank=r)
    except Exception:  # the store's host (rank 0 without torchrun's agent) is gone
        return DistributedError(f"collective #{_seq} ({what}) failed on rank {me} of {world}; a peer exited "
                                f"without a message (the store is gone too): {first}")
    missing = [r for r in range(world) if r not in posted]
    names = ", ".join(str(r) for r in missing) or "?"
    return DistributedError(
        f"rank {names} of {world} did not reach collective #{_seq} ({what}) within {_timeout_s:g}s: hung, or "
        f"died without a message; every rank stopped (seen from rank {me}: {first})", missing_ranks=missing)


def _collective(what: str, nbytes: int, fn):
    global _seq
    _seq += 1
    t0 = time.perf_counter()
    try:
        out = fn()
    except RuntimeError as e:  # gloo / nccl: a peer's sockets closed, or the timeout passed
        raise _explain(what, e) from e
    COMM.collectives += 1
    COMM.bytes += nbytes
    COMM.seconds += time.perf_counter() - t0
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# -- plain collectives ---------------------------------------------------------------------------------
def _comm_device(t: torch.Tensor) -> torch.device:
    """Where the backend needs ``t``: nccl reduces CUDA tensors only."""
    if _dist().get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _reduce(t: torch.Tensor, op_name: str, what: str | None = None) -> torch.Tensor:
    """``t`` reduced over ranks in place (through a copy on the backend's device when needed)."""
    dist = _dist()
    op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op_name]
    dev = _comm_device(t)
    buf = t if dev == t.device else t.to(dev)
    _collective(what or f"all_reduce {op_name} {tuple(t.shape)}", _nbytes(t), lambda: dist.all_reduce(buf, op=op))
    if buf is not t:
        t.copy_(buf)
    return t


def _as_tensor(x, dtype=torch.float64) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x.detach().clone(), False
    return torch.tensor(x, dtype=dtype), True


def _all_reduce(x, op_name: str):
    if not is_distributed():
        return x
    t, scalar = _as_tensor(x)
    t = _reduce(t, op_name)
    return t.item() if scalar else t


def all_reduce_sum(x):
    """Sum over ranks of ``x`` (a tensor, returned as a new tensor, or a Python number, summed in float64
    and returned as a float); ``x`` itself in one process."""
    return _all_reduce(x, "sum")


def all_reduce_max(x):
    """Elementwise maximum over ranks (exact: the result is one rank's value)."""
    return _all_reduce(x, "max")


def all_reduce_min(x):
    """Elementwise minimum over ranks (exact)."""
    return _all_reduce(x, "min")


def all_reduce_grads(params: Iterable[torch.nn.Parameter], *, average: bool = False) -> None:
    """Sum (``average``: mean) the ``.grad`` of ``params`` over ranks in place, as ``DistributedDataParallel``
    does, in one flat all-reduce. With each rank's loss normalised by the number of samples on *all* ranks
    (a sum over its shard divided by :func:`shard_count` of the sample count), the sum is the gradient of
    the single-process loss on all the images. Parameters without a gradient are skipped (the same on
    every rank, since every rank runs the same graph)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _reduce(flat, "sum")
    if average:
        flat.div_(world_size())
    i = 0
    for g in grads:
        g.copy_(flat[i: i + g.numel()].view_as(g))
        i += g.numel()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors concatenated along dim 0 in rank order (sizes may differ along dim 0 only):
    with :func:`shard` blocks this is the single-process order. ``t`` itself in one process."""
    if not is_distributed():
        return t
    dist = _dist()
    dev = _comm_device(t)
    src = t.to(dev)
    sizes = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    _collective("all_gather sizes", _nbytes(sizes), lambda: dist.all_gather(all_sizes, sizes))
    counts = [int(s) for s in all_sizes]
    top = max(counts)
    padded = src.new_zeros((top, *t.shape[1:]))
    padded[: t.shape[0]] = src
    parts = [torch.empty_like(padded) for _ in counts]
    _collective(f"all_gather {tuple(padded.shape)}", _nbytes(padded), lambda: dist.all_gather(parts, padded))
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    dist = _dist()
    out = [None] * world_size()
    _collective("all_gather_object", len(pickle.dumps(obj)), lambda: dist.all_gather_object(out, obj))
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank; ``obj`` in one process."""
    if not is_distributed():
        return obj
    dist = _dist()
    box = [obj if rank() == src else None]
    _collective("broadcast_object", len(pickle.dumps(obj)) if rank() == src else 0,
                lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def barrier(what: str = "barrier") -> None:
    """Wait until every rank is here (an all-reduce, so that it honours the timeout on every backend)."""
    if is_distributed():
        _reduce(torch.zeros(1), "sum", what)


@contextlib.contextmanager
def main_first(what: str = "writing outputs") -> Iterator[bool]:
    """``with main_first() as writer: if writer: ...write...``: every rank first waits until all ranks
    got here (a rank that failed earlier stops the others here, before anything is written); then rank 0
    runs the block while the others wait for it, so a failure while writing stops every rank too.
    Yields True on rank 0 (always in one process)."""
    barrier(f"barrier before {what}")
    yield is_main()
    barrier(f"barrier after {what}")


# -- shard statistics ------------------------------------------------------------------------------------
@contextlib.contextmanager
def sharded(enabled: bool = True) -> Iterator[None]:
    """The scope in which the data each rank sees is its shard of the images, so that the ``shard_*``
    statistics below combine the ranks (outside it they are local; in one process they always are)."""
    token = _sharded.set(enabled and is_distributed())
    try:
        yield
    finally:
        _sharded.reset(token)


def in_shard_scope() -> bool:
    return _sharded.get()


def shard_sum(x):
    """Sum over the shards of a per-shard sum (float or tensor) inside :func:`sharded`, else ``x``.
    Floats are summed in float64: the result equals the single-process sum up to summation order."""
    return all_reduce_sum(x) if _sharded.get() else x


def shard_count(n: int) -> int:
    """Number of samples on all shards inside :func:`sharded`, else ``n``."""
    return int(all_reduce_sum(torch.tensor(n, dtype=torch.int64)).item()) if _sharded.get() else n


def shard_max(x: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over the shards inside :func:`sharded` (exact), else ``x``."""
    return all_reduce_max(x) if _sharded.get() else x


def shard_min(x: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum over the shards inside :func:`sharded` (exact), else ``x``."""
    return all_reduce_min(x) if _sharded.get() else x


def shard_rows(t: torch.Tensor) -> torch.Tensor:
    """All shards' rows (dim 0) in rank order inside :func:`sharded`, else ``t``: for statistics that need
    every sample at once (quantiles), bit-identical to one process."""
    return all_gather_rows(t) if _sharded.get() else t


def shard_batches(batches: list) -> list:
    """All shards' lists of batches (any picklable structure of tensors) concatenated in rank order inside
    :func:`sharded`, else ``batches``: for per-unit work that is cheap next to the search and exact only
    on all the data (LayerNorm folding statistics)."""
    if not _sharded.get():
        return batches
    return [b for part in all_gather_object(batches) for b in part]
