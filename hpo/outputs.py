"""Files a user names with `-o`: written atomically, and a failure is one line naming the path, why, and the fix.

`-o -` is standard output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpo.errors import StudyError
from model.checkpoint import atomic_write_text

STDOUT = "-"  # `-o -`: standard output, as most command lines read it


def to_stdout(path: str | Path) -> bool:
    """`path` is `-`: the output goes to standard output (a command then prints its own lines to stderr)."""
    return isinstance(path, str) and path == STDOUT


def write_output(path: str | Path, text: str, what: str = "file") -> None:
    """Write `text` to `path` atomically (never half-written), or to standard output when `path` is `-`.

    Raises:
        StudyError: `path` cannot be written; the message says why (a parent that is a file, no permission, ...).
    """
    if to_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise StudyError(
            f"cannot write {str(path)!r} ({_why(Path(path), exc)}): choose a writable {what} with -o"
        ) from None


def _why(path: Path, exc: OSError) -> str:
    """The reason a write failed, naming a parent that is a file (mkdir's own "File exists" misleads)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return exc.strerror or str(exc)
