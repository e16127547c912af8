"""
spear_twisted: the Spear spearlet's execution communication layer on Twisted.

This top-level module stays free of Twisted imports so that the wire layer and
the asyncio side of the agent SDK can be used without it; the Twisted parts
live in their own subpackages.
"""

from spear_twisted._version import __version__
from spear_twisted.wire.identity import RuntimeInstanceId, RuntimeType

__all__ = ["RuntimeInstanceId", "RuntimeType", "__version__"]
