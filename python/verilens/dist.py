"""torch.distributed helpers: many processes launched by torchrun (or srun + torchrun), never
a scheduler of our own.

verilens reads the environment torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); with WORLD_SIZE unset or 1 every helper here is the single-process identity,
so the same code path runs with one process or many.

- `init()` starts the process group once: gloo on CPU, NCCL when the run uses CUDA, with a
  timeout (VERILENS_DIST_TIMEOUT seconds, default 1800) so that a rank that hangs ends the
  job with an error instead of a hang. A rank that dies is noticed by torchrun, which stops
  the others. Python objects always travel over a gloo group (also under NCCL).
- `split(n)`: the work units of this rank, a contiguous, deterministic block of range(n).
- `gather(obj)`: every rank's object, on every rank, in rank order; `broadcast(obj)`.
- `agree(fn)` / `on_main(fn)`: run work so that an error on any rank becomes the same
  clear error on every rank, instead of some ranks waiting for the failed one."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle

import torch

from .errors import VerilensError

_objects = None  # the gloo group Python objects travel over
_DEFAULT_TIMEOUT = 1800.0


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torch.distributed environment; (0, 1, 0)
    outside torchrun."""
    def num(name, default):
        value = os.environ.get(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise VerilensError(f"{name}={value!r} in the environment is not a number; torchrun sets it") from None

    world = num("WORLD_SIZE", 1)
    rank = num("RANK", 0)
    local = num("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise VerilensError(f"RANK={rank} and WORLD_SIZE={world} in the environment do not fit together")
    return rank, world, local


def local_world_size() -> int:
    """How many ranks torchrun started on this node (LOCAL_WORLD_SIZE); 1 outside torchrun."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        n = int(value)
    except ValueError:
        raise VerilensError(f"LOCAL_WORLD_SIZE={value!r} is not a number (torchrun sets it)") from None
    if n < 1:
        raise VerilensError(f"LOCAL_WORLD_SIZE={n}: must be at least 1")
    return n


def launched() -> bool:
    """Whether this process is one of several launched by torchrun (WORLD_SIZE > 1)."""
    return env_world()[1] > 1


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def timeout_seconds() -> float:
    value = os.environ.get("VERILENS_DIST_TIMEOUT", "")
    try:
        t = float(value) if value else _DEFAULT_TIMEOUT
    except ValueError:
        raise VerilensError(f"VERILENS_DIST_TIMEOUT={value!r} is not a number of seconds") from None
    if t <= 0:
        raise VerilensError(f"VERILENS_DIST_TIMEOUT must be positive, not {value}")
    return t


def init(cuda: bool = False) -> bool:
    """Start the process group once if launched by torchrun (NCCL for a CUDA run, else gloo);
    True when running with more than one rank. `cuda`: this process uses
    cuda:LOCAL_RANK (set as its current device)."""
    global _objects
    rank_, world, local = env_world()
    if world == 1:
        return False
    if active():
        return True
    if not torch.distributed.is_available():
        raise VerilensError("launched by torchrun, but this torch build has no torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise VerilensError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun "
                                "(it sets the rendezvous), not by setting WORLD_SIZE alone")
    timeout = datetime.timedelta(seconds=timeout_seconds())
    backend = "gloo"
    if cuda:
        if not torch.cuda.is_available():
            raise VerilensError("--device cuda under torchrun, but this process sees no CUDA device")
        if local >= torch.cuda.device_count():
            raise VerilensError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} CUDA devices: "
                                "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        backend = "nccl"
    torch.distributed.init_process_group(backend, timeout=timeout, rank=rank_, world_size=world)
    _objects = torch.distributed.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return True


def shutdown() -> None:
    """End the process group (if this process started one), once every rank is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()  # every rank done before any tears its side down
    abandon()


def abandon() -> None:
    """End the process group at once, without waiting for the others: a rank that fails.
    Left to the interpreter's exit, gloo's threads can abort the process ("terminate called
    without an active exception", SIGABRT) instead of letting it exit with its code."""
    global _objects
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _objects = None


def split(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """The units of range(n) this rank does: contiguous blocks in rank order, sizes differing
    by at most one (the first n % world ranks get one more). A rank may get none (idle) when
    there are fewer units than ranks."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    q, extra = divmod(n, w)
    start = r * q + min(r, extra)
    return range(start, start + q + (r < extra))


def _collective(fn):
    """fn() (a collective); a timeout or a lost peer becomes a clear error."""
    try:
        return fn()
    except RuntimeError as e:  # gloo / NCCL: "Timed out waiting ...", "Connection closed by peer", ...
        raise VerilensError(
            f"rank {rank()}: the other ranks did not answer ({str(e).splitlines()[0][-160:]}): a rank stopped, "
            f"or ran more than VERILENS_DIST_TIMEOUT={timeout_seconds():g} s behind the others; rerun with "
            "--resume (raise VERILENS_DIST_TIMEOUT if the ranks' shares of a step differ that much)") from e


def gather(obj, to_all: bool = True) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in one process); with
    `to_all=False` on rank 0 only (None elsewhere)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    if to_all:
        _collective(lambda: torch.distributed.all_gather_object(out, obj, group=_objects))
        return out
    main = is_main()
    _collective(lambda: torch.distributed.gather_object(obj, out if main else None, dst=0, group=_objects))
    return out if main else None


def broadcast(obj, src: int = 0):
    """Rank `src`'s obj, on every rank."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    _collective(lambda: torch.distributed.broadcast_object_list(box, src=src, group=_objects))
    return box[0]


def barrier() -> None:
    if active():
        _collective(lambda: torch.distributed.barrier(group=_objects))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `t` over ranks, in place (a no-op in one process). A CUDA
    tensor under NCCL is reduced by NCCL; any other is gathered over gloo and added on CPU
    in rank order (rank 0 + rank 1 + ...), the same order on every run."""
    if not active():
        return t
    if t.is_cuda and torch.distributed.get_backend() == "nccl":
        _collective(lambda: torch.distributed.all_reduce(t))
        return t
    parts = gather(t.detach().cpu())
    total = parts[0].clone()
    for p in parts[1:]:
        total += p
    t.copy_(total.to(t.device))
    return t


def _pickled(exc: BaseException):
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception that does not travel: send its text
        return VerilensError(f"{type(exc).__name__}: {exc}")


def _raise_first(statuses, what: str) -> None:
    """Raise the error of the lowest failing rank, on this rank: a VerilensError as the
    same one-line error on every rank, naming the rank; any other error as itself."""
    failed = [(r, e) for r, (ok, e) in enumerate(statuses) if not ok]
    if not failed:
        return
    r, e = failed[0]
    if isinstance(e, VerilensError):
        others = f" (and ranks {[x for x, _ in failed[1:]]})" if len(failed) > 1 else ""
        raise VerilensError(f"rank {r}{others} {what}: {e}") from e
    raise e


def agree(fn, what: str = "failed"):
    """fn() on every rank; if it raises on any rank, every rank raises that rank's error
    (the lowest failing rank's), instead of the others waiting at the next collective."""
    if not active():
        return fn()
    try:
        value, status = fn(), (True, None)
    except Exception as e:  # noqa: BLE001 - sent to the other ranks, then raised here too
        value, status = None, (False, _pickled(e))
    _raise_first(gather(status), what)
    return value


def on_main(fn, what: str = "failed"):
    """fn() on rank 0 only; its result (or its error, on every rank) everywhere."""
    if not active():
        return fn()
    if is_main():
        try:
            msg = (True, fn())
        except Exception as e:  # noqa: BLE001
            msg = (False, _pickled(e))
        broadcast(msg)
    else:
        msg = broadcast(None)
    if not msg[0]:
        _raise_first([msg], what)
    return msg[1]


def digest(obj) -> str:
    """A short hash of a JSON-able object (settings), the same on every machine."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same(obj, what: str) -> None:
    """Raise the same clear error on every rank unless `obj` (JSON-able) is equal on all ranks."""
    if not active():
        return
    mine = digest(obj)
    all_ = gather((mine, obj))
    if len({h for h, _ in all_}) > 1:
        diff = ""
        if isinstance(obj, dict):
            keys = sorted({k for _, o in all_ if isinstance(o, dict) for k in o}
                          - {k for k in obj if all(isinstance(o, dict) and o.get(k) == obj.get(k) for _, o in all_)})
            diff = "; they differ in " + ", ".join(keys[:8]) if keys else ""
        by_rank = ", ".join(f"rank {r}: {h}" for r, (h, _) in enumerate(all_))
        raise VerilensError(f"the ranks were started with different {what} ({by_rank}){diff}: "
                            "every rank must run the same command with the same files")
