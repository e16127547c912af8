"""
A ready example agent: ``python -m spear_twisted.agent.echo``.

It answers each request with its command and arguments, joined by spaces.
``--framework twisted`` runs it under Twisted; asyncio is the default.
"""

from __future__ import annotations

import sys

from spear_twisted.agent.runner import FRAMEWORKS, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from spear_twisted.wire import ExecuteRequest

USAGE = "usage: python -m spear_twisted.agent.echo [--framework {asyncio,twisted}]"


def echo(request: ExecuteRequest) -> str:
    """The request's command and arguments, joined by spaces."""
    return " ".join((request.command, *request.args))


def main(argv: list[str] | None = None) -> int:
    """Run the echo agent; its exit status."""
    args = sys.argv[1:] if argv is None else argv
    framework = "asyncio"
    if args[:1] == ["--framework"] and len(args) == 2 and args[1] in FRAMEWORKS:
        framework = args[1]
    elif args:
        sys.stderr.write(f"{USAGE}\n")
        return 2
    return run(echo, framework=framework)


if __name__ == "__main__":
    sys.exit(main())
