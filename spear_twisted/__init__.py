"""
spear_twisted: the Spear spearlet's execution communication layer on Twisted.

Importing this package is cheap and imports no Twisted: an agent process
authenticates before it pays for its framework, and the wire layer and the
asyncio side of the agent SDK never need Twisted.  ``RuntimeInstanceId`` and
``RuntimeType`` are loaded on first use.
"""

from __future__ import annotations

from spear_twisted._version import __version__

# Not typing.TYPE_CHECKING: importing typing would cost every agent's start 8 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RuntimeInstanceId", "RuntimeType", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("RuntimeInstanceId", "RuntimeType"):
        from spear_twisted.wire import identity

        return getattr(identity, name)
    raise AttributeError(f"module 'spear_twisted' has no attribute {name!r}")
