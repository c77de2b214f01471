"""The run folder of `verilens analyze`: DIR/cache/settings.json marks DIR as a verilens run
and holds its settings; DIR/cache/STEP.json or STEP.pt holds each finished step, with
STEP.*.sha256 beside it, written after it.

Rules (issue 24): a folder that is not a verilens run is never deleted or written into,
with or without --force, unless it is empty; --force on a run discards its cache only, and
the finished report (report.json, report.html, figures/) stays until the new run writes its
own; a cache file without its checksum (a run killed between the two writes) or with a wrong
one (a truncated or damaged file) is named in a warning and recomputed, never read as data,
and every later step is recomputed with it.

Under torchrun (verilens.dist) rank 0 alone checks and opens the folder, reads and writes
the step files and the report; an error there is raised on every rank. A step's work is
either done by rank 0 (its result sent to the others) or, for the sweeps, split into units
(`units`): each rank writes its finished units to cache/units/STEP/UNIT.pt (atomic, with
a checksum), so that a resumed run recomputes only the units missing. Units of a step stay
valid while the steps before it are read from the cache; when a step is recomputed, the
units of every later step are discarded with their step files."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from .. import dist
from ..errors import VerilensError, check_out_folder

MARKER = "settings.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either the old file or all of the new one:
    a temporary file, flushed to disk, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _listing(entries: list[Path]) -> str:
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:5]]
    return ", ".join(names) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")


class RunDir:
    """DIR with its cache: atomic, checksummed writes; resume; refusal to touch other folders."""

    def __init__(self, out, settings_json: dict, resume: bool = False, force: bool = False):
        self.out = Path(out)
        self.cache = self.out / "cache"
        self.units_dir = self.cache / "units"
        dist.on_main(lambda: self._open(settings_json, resume, force), what="could not open the run folder")
        self._recomputing = False  # once a step is computed, every later one is too
        self._read_steps: set[str] = set()

    def _open(self, settings_json: dict, resume: bool, force: bool) -> None:
        marker = self.cache / MARKER
        check_out_folder(self.out)
        entries = sorted(self.out.iterdir()) if self.out.exists() else []
        if entries and not marker.is_file():
            raise VerilensError(
                f"{self.out} is not a verilens run folder (no cache/{MARKER}) and holds {_listing(entries)}; "
                "--resume and --force only work on a verilens run folder, so nothing there was touched: "
                "choose a new or empty --out")
        if entries and force:
            shutil.rmtree(self.cache)  # the old run's cache only: its report stays until the new one replaces it
        elif entries and resume:
            try:
                saved = json.loads(marker.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise VerilensError(f"{marker} is unreadable ({str(e)[:100]}), so the settings of the run in "
                                    f"{self.out} are unknown; pass --force to start it over") from e
            if saved != settings_json:
                differ = sorted(k for k in set(saved) | set(settings_json) if saved.get(k) != settings_json.get(k))
                shown = ", ".join(f"{k} (run: {saved.get(k)!r}, now: {settings_json.get(k)!r})"[:160] for k in differ[:4])
                raise VerilensError(f"{self.out} holds a run with other settings: {shown}; rerun with the run's "
                                    "settings, or use another folder, or --force to start it over")
        elif entries:
            raise VerilensError(f"{self.out} holds a verilens run; pass --resume to continue it or --force to start "
                                "over (its report is kept until the new run writes its own)")
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps(settings_json, indent=1).encode())

    def _read(self, name: str):
        """The cached result of step `name`, or None (with a warning if a file was there but
        could not be trusted)."""
        for path, load in ((self.cache / f"{name}.json", lambda p: json.loads(p.read_text())),
                           (self.cache / f"{name}.pt", lambda p: torch.load(p, weights_only=False))):
            got = _checked_read(path, load, f"recomputing step '{name}' and the steps after it")
            if got is not None:
                return got
        return None

    def _discard_after(self, name: str) -> None:
        """Step `name` is about to be computed: discard the files of every step not read from
        the cache (they were computed from what this step replaces), and the units of those
        after it. Its own units stay: they were computed from the steps read."""
        for f in self.cache.iterdir():
            if f.is_file() and f.name != MARKER and f.name.split(".")[0] not in self._read_steps:
                f.unlink()
        if self.units_dir.is_dir():
            for d in self.units_dir.iterdir():
                if d.name != name and d.name not in self._read_steps:
                    shutil.rmtree(d) if d.is_dir() else d.unlink()

    def step(self, name: str, fn, split: bool = False):
        """fn()'s result (JSON-able, or a dict of tensors), cached as cache/NAME.json or .pt.

        Under torchrun: rank 0 reads the cache and sends the result to every rank. A step
        that is not `split` is computed by rank 0 alone; a `split` one runs fn on every rank
        (fn splits its work with `units`; what it computes outside them must give the same
        on every rank)."""
        def lookup():
            if self._recomputing:
                return None
            cached = self._read(name)
            if cached is None:
                self._discard_after(name)
            return cached

        cached = dist.on_main(lookup)
        if cached is not None:
            self._read_steps.add(name)
            return cached[0]
        self._recomputing = True
        result = fn() if split else dist.on_main(fn)

        def write():
            if isinstance(result, dict) and any(isinstance(v, torch.Tensor) for v in result.values()):
                buf = io.BytesIO()
                torch.save(result, buf)
                path, data = self.cache / f"{name}.pt", buf.getvalue()
            else:
                path, data = self.cache / f"{name}.json", json.dumps(result, indent=1).encode()
            _write_checked(path, data)

        dist.on_main(write)
        return result

    def units(self, name: str, n: int, compute, main_only: bool = False) -> dict | None:
        """The results {unit: result} of units 0..n-1 of step `name`, on every rank (with
        `main_only`, on rank 0 only: None elsewhere). This rank does its share
        (`dist.split(n)`): units it finished before are read from cache/units/NAME/, the
        others computed by `compute(keys)`, a generator of (key, result), and each is
        written as soon as it is done. An error on any rank is raised on every rank."""
        folder = self.units_dir / name
        mine = list(dist.split(n))
        done: dict[int, object] = {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for k in mine:
                got = _checked_read(folder / f"{k:06d}.pt", lambda p: torch.load(p, weights_only=False),
                                    f"recomputing that unit of step '{name}'")
                if got is not None and isinstance(got[0], dict) and got[0].get("n") == n:
                    done[k] = got[0]["result"]
            for k, result in compute([k for k in mine if k not in done]):
                buf = io.BytesIO()
                torch.save({"n": n, "result": result}, buf)
                _write_checked(folder / f"{k:06d}.pt", buf.getvalue())
                done[k] = result
            status = (True, None)
        except Exception as e:  # noqa: BLE001 - every rank raises it (dist.agree)
            status = (False, dist._pickled(e))
        dist.agree(lambda: _raise_if(status), what=f"failed in step '{name}'")
        parts = dist.gather(done, to_all=not main_only)
        if parts is None:
            return None
        merged: dict[int, object] = {}
        for part in parts:
            merged.update(part)
        missing = sorted(set(range(n)) - set(merged))
        if missing:
            raise VerilensError(f"step '{name}': units {missing[:5]} were done by no rank (a bug in verilens)")
        return merged


def _raise_if(status):
    ok, err = status
    if not ok:
        raise err


def _checked_read(path: Path, load, then: str):
    """(the content of `path`,) when it is there with its checksum, else None; a file that
    cannot be trusted is named in a warning and deleted."""
    if not path.exists():
        return None
    check = path.with_name(path.name + ".sha256")
    why = None
    if not check.exists():
        why = "has no checksum (the run stopped while writing it)"
    elif check.read_text().strip() != hashlib.sha256(path.read_bytes()).hexdigest():
        why = "does not match its checksum (truncated or damaged)"
    else:
        try:
            return (load(path),)
        except Exception as e:  # a checksummed file that still does not load: recompute it too
            why = f"cannot be read ({type(e).__name__})"
    warnings.warn(f"{path} {why}; {then}", stacklevel=4)
    path.unlink()
    check.unlink(missing_ok=True)
    return None


def _write_checked(path: Path, data: bytes) -> None:
    """`data` to `path`, then its checksum beside it (both atomic): the checksum is the mark
    of a finished file."""
    atomic_write(path, data)
    atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
