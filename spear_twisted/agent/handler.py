"""What a handler may raise to choose how its request fails."""

from __future__ import annotations


class TaskFailed(Exception):
    """
    Raised by a handler: the request failed with ``message``, ``exit_code``
    and optionally some ``output``.  Any other exception fails the request
    too, with its type and message and exit code 1.
    """

    def __init__(self, message: str, *, exit_code: int = 1, output: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.output = output
