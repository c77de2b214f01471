"""The run folder of `verilens analyze`: DIR/cache/settings.json marks DIR as a verilens run
and holds its settings; DIR/cache/STEP.json or STEP.pt holds each finished step, with
STEP.*.sha256 beside it, written after it.

Rules (issue 24): a folder that is not a verilens run is never deleted or written into,
with or without --force, unless it is empty; --force on a run discards its cache only, and
the finished report (report.json, report.html, figures/) stays until the new run writes its
own; a cache file without its checksum (a run killed between the two writes) or with a wrong
one (a truncated or damaged file) is named in a warning and recomputed, never read as data,
and every later step is recomputed with it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

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
                raise VerilensError(f"{self.out} holds a run with other settings; use another folder or --force")
        elif entries:
            raise VerilensError(f"{self.out} holds a verilens run; pass --resume to continue it or --force to start "
                                "over (its report is kept until the new run writes its own)")
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps(settings_json, indent=1).encode())
        self._recomputing = False  # once a step is computed, every later one is too
        self._read_steps: set[str] = set()

    def _read(self, name: str):
        """The cached result of step `name`, or None (with a warning if a file was there but
        could not be trusted)."""
        for path, load in ((self.cache / f"{name}.json", lambda p: json.loads(p.read_text())),
                           (self.cache / f"{name}.pt", lambda p: torch.load(p, weights_only=False))):
            if not path.exists():
                continue
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
            warnings.warn(f"{path} {why}; recomputing step '{name}' and the steps after it", stacklevel=3)
            path.unlink()
            check.unlink(missing_ok=True)
        return None

    def step(self, name: str, fn):
        """fn()'s result (JSON-able, or a dict of tensors), cached as cache/NAME.json or .pt."""
        if not self._recomputing:
            cached = self._read(name)
            if cached is not None:
                self._read_steps.add(name)
                return cached[0]
            # later steps' files were computed from what this step is about to replace
            for f in self.cache.iterdir():
                if f.is_file() and f.name != MARKER and f.name.split(".")[0] not in self._read_steps:
                    f.unlink()
        self._recomputing = True
        result = fn()
        if isinstance(result, dict) and any(isinstance(v, torch.Tensor) for v in result.values()):
            buf = io.BytesIO()
            torch.save(result, buf)
            path, data = self.cache / f"{name}.pt", buf.getvalue()
        else:
            path, data = self.cache / f"{name}.json", json.dumps(result, indent=1).encode()
        atomic_write(path, data)
        atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
        return result
