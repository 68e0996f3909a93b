"""Files a user names with `-o`: written atomically, and a failure is one line naming the path, why, and the fix."""

from __future__ import annotations

from pathlib import Path

from hpo.errors import StudyError
from model.checkpoint import atomic_write_text


def write_output(path: str | Path, text: str, what: str = "file") -> None:
    """Write `text` to `path` atomically (never half-written).

    Raises:
        StudyError: `path` cannot be written; the message says why (a parent that is a file, no permission, ...).
    """
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
