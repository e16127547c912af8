"""
The agent SDK: a Python program becomes a Spear instance in a few lines::

    from spear_twisted.agent import run

    def handle(request):
        return f"hello {' '.join(request.args)}"

    raise SystemExit(run(handle))

Importing this package is cheap: the framework (asyncio, or Twisted with
``framework="twisted"``) and the wire layer are imported by :func:`run`
only after the agent has connected and presented its secret.
"""

from spear_twisted.agent.config import (
    EXIT_AUTH_REFUSED,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_UNREACHABLE,
    AgentConfig,
    AgentConfigError,
)
from spear_twisted.agent.handler import TaskFailed
from spear_twisted.agent.runner import FRAMEWORKS, run

__all__ = [
    "EXIT_AUTH_REFUSED",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_UNREACHABLE",
    "FRAMEWORKS",
    "AgentConfig",
    "AgentConfigError",
    "TaskFailed",
    "run",
]
