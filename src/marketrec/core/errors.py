"""The error tree.

Every error a user can cause (bad data, bad configuration, unknown names) is a
`MarketrecError`, so entry points (CLI, HTTP) can turn it into one clear line or a 4xx
response without a traceback. Nothing here knows about HTTP.
"""

from __future__ import annotations


class MarketrecError(Exception):
    """Base of every error caused by input the user can fix."""


class DataError(MarketrecError):
    """A dataset file is missing, unreadable or violates the canonical schema.

    The message always names the file, and the column and number of offending rows when the
    problem is about rows.
    """

    def __init__(
        self, file: str, problem: str, *, column: str | None = None, rows: int | None = None
    ) -> None:
        self.file = file
        self.column = column
        self.rows = rows
        self.problem = problem
        where = file if column is None else f"{file}, column '{column}'"
        count = "" if rows is None else f" ({rows:,} row{'s' if rows != 1 else ''})"
        super().__init__(f"{where}: {problem}{count}")


class ConfigError(MarketrecError):
    """A configuration value or command-line option is invalid."""


class ModelError(MarketrecError):
    """A model folder is missing, unreadable or of an unknown kind."""


class RecordError(MarketrecError):
    """A record that arrived over the wire (an event, an item or user update) is invalid.

    `record` says which one ("event 3", "item", "user"); `field` names the offending field when
    the problem is about one. The HTTP layer answers it with a 4xx and this message, so the
    message must be enough for a client to fix the request.
    """

    def __init__(
        self,
        record: str,
        problem: str,
        *,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        self.record = record
        self.problem = problem
        self.field = field
        self.index = index
        where = record if field is None else f"{record}: field '{field}'"
        super().__init__(f"{where}: {problem}")
