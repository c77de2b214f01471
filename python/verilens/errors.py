"""The one exception type users see. Every error a user can cause is a VerilensError
with a message that says what went wrong and what to do."""


class VerilensError(Exception):
    """A problem with the user's input, files or environment (not a bug in verilens)."""


def check_out_folder(out) -> None:
    """An output folder must be a folder or not exist yet (it is created then)."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VerilensError(f"--out {out} is a file, not a folder; name a folder (it is created if missing)")
