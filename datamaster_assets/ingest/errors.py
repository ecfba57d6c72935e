"""Errors of the raw -> bronze conversion."""

from __future__ import annotations


class BadInputError(ValueError):
    """The file as a whole cannot be converted (not gzip, truncated, empty, missing required
    columns, unknown table or format). The worker quarantines it at once: retrying cannot help.

    The message always starts with the source object's key and names the line/field where one
    applies.
    """

    def __init__(self, source: str, problem: str, *, line: int | None = None, field: str | None = None):
        self.source = source
        self.problem = problem
        self.line = line
        self.field = field
        where = source
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


class SourceReadError(Exception):
    """Reading the raw object itself failed (a network timeout, a dropped connection, a disk
    error): the file may be fine, so the worker retries it. Deliberately not an OSError, so the
    decompression code that turns damaged gzip data into BadInputError cannot mistake it."""

    def __init__(self, source: str, exc: BaseException):
        self.source = source
        super().__init__(f"{source}: reading the object failed: {type(exc).__name__}: {exc}")
