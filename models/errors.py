"""The base of every error seqcast raises on purpose, importable from every layer (models imports nothing of tasks
or flows, so tasks and flows can import it from here).

A `SeqcastError` carries one message that names what failed and, where there is one, the fix; the CLI prints it as
`error: <message>` with no traceback. Each concrete error also keeps the builtin base it had (ValueError for bad
input, RuntimeError or ConnectionError for a failing store), so `except ValueError` and retry conditions written
against those keep working.
"""

from __future__ import annotations


class SeqcastError(Exception):
    """An error whose message is meant for the user as written (bad input, a missing model, a store that failed)."""


class UnusableDataError(SeqcastError, ValueError):
    """Observations a run cannot use as they are (mixed frequencies, series too short for the window, none at all);
    the message names the series and what to change."""
