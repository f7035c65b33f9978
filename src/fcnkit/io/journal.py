"""The completion journal that lets an interrupted tiled prediction resume.

A text file next to the output: the first line is a flat JSON object, ``{"format": "fcnkit-journal", "version": 1}``
plus the fingerprint (shape, dtype, kind, output_format, plan), then one finished tile id per line. Ids are
appended with a single ``write`` + fsync only after the tile's chunks were written and synced, so after a crash every
id in the journal names a tile that is really on disk. A line torn by a crash (no final newline) is ignored and cut
off when the journal is reopened, so the next id starts on a line of its own: that tile is simply computed again. An
append that fails (a full disk) is cut back the same way before the error is raised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fcnkit.errors import DiskFullError, OutputError
from fcnkit.io.atomic import atomic_file, writing

_FORMAT = "fcnkit-journal"


class Journal:
    """An open journal; ``append(tile_id)`` records one finished tile durably."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], done: set[int]) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.done = done
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND)

    @classmethod
    def create(cls, path: Path, fingerprint: dict[str, Any]) -> Journal:
        """Start a new journal holding only the fingerprint (written atomically, so it is never torn).

        The keys "format" and "version" are the journal's own and may not appear in ``fingerprint``.
        """
        with atomic_file(path, "w") as f:
            f.write(json.dumps({"format": _FORMAT, "version": 1, **fingerprint}) + "\n")
        return cls(path, fingerprint, set())

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Reopen an existing journal, reading its fingerprint and the ids of the tiles already finished."""
        text = path.read_text()
        lines = text.split("\n")
        torn = lines.pop()  # the text after the last newline: empty, or an id torn by a crash
        try:
            header = json.loads(lines[0])
            if header.get("format") != _FORMAT:
                raise ValueError("not an fcnkit journal")
            done = {int(line) for line in lines[1:]}
        except (ValueError, IndexError) as exc:
            raise OutputError(
                f"resume journal {path} is corrupted ({exc}); pass --overwrite to start the output again"
            ) from exc
        fingerprint = {k: v for k, v in header.items() if k not in ("format", "version")}
        if torn:  # cut it off, or the next append would glue its id onto the torn digits
            os.truncate(path, len(text.encode()) - len(torn.encode()))
        return cls(path, fingerprint, done)

    def append(self, tile_id: int) -> None:
        """Record ``tile_id`` as finished: one append, then fsync."""
        if self._fd is None:
            raise OutputError(f"resume journal {self.path} is closed; reopen the output to record more tiles")
        line = f"{int(tile_id)}\n".encode()
        size = os.fstat(self._fd).st_size
        try:
            with writing(self.path, " (the resume journal)"):
                rest = line
                while rest:  # a short write means the disk filled up mid-line; the next write says so
                    rest = rest[os.write(self._fd, rest):]
                os.fsync(self._fd)
        except (OSError, DiskFullError):
            os.ftruncate(self._fd, size)  # no torn line stays behind; shrinking a file needs no space
            raise
        self.done.add(int(tile_id))

    def close(self) -> None:
        """Close the file, keeping it for a later resume."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Close and delete the journal (the output was finalised)."""
        self.close()
        self.path.unlink(missing_ok=True)
