"""The completion journal that lets an interrupted tiled prediction resume.

A text file next to the output: the first line is a flat JSON object, ``{"format": "fcnkit-journal", "version": 1}``
plus the fingerprint (shape, dtype, kind, output_format, plan), then one finished tile id per line. Ids are
appended with a single ``write`` + fsync only after the tile's chunks were written and synced, so after a crash every
id in the journal names a tile that is really on disk. A line torn by a crash (no final newline) is ignored: that
tile is simply computed again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fcnkit.errors import OutputError
from fcnkit.io.atomic import atomic_file

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
        lines.pop()  # the text after the last newline: empty, or an id torn by a crash
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
        return cls(path, fingerprint, done)

    def append(self, tile_id: int) -> None:
        """Record ``tile_id`` as finished: one append, then fsync."""
        if self._fd is None:
            raise OutputError(f"resume journal {self.path} is closed; reopen the output to record more tiles")
        os.write(self._fd, f"{int(tile_id)}\n".encode())
        os.fsync(self._fd)
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
