"""What a command added to a data dir, taken back when the command fails.

A command that fails must leave the data dir as it found it: no database, key or token made on the way to
an error. Only a data dir without a database is taken back: in one that has a database, a new journal file
may hold another process's writes. Blocking: call it off the event loop.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class DirChanges:
    def __init__(self, path: Path, database: str) -> None:
        self.path = path
        self.existed = path.is_dir()
        self.before = set(os.listdir(path)) if self.existed else set()
        self.in_use = database in self.before

    def undo(self) -> None:
        """Remove what appeared in the directory since, and the directory itself if it is new."""
        if self.in_use:
            return
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            names = set(os.listdir(self.path)) - self.before
        except FileNotFoundError:
            return
        for name in names:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
