"""The one error type the user sees: a bad input, reported as one line naming the file (and line)."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage. The CLI prints `str(error)` and exits with code 2; never a traceback."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or ""
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}" if where else self.message
