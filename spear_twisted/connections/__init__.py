"""
The ConnectionManager: listeners, the handshake's policy, limits, connection
states and events.

The public names are re-exported here; the modules behind them are
``config``, ``admission``, ``listeners``, ``state``, ``tls`` and ``manager``.
"""

from spear_twisted.connections.admission import Admission
from spear_twisted.connections.config import MIN_BACKLOG, ConnectionManagerConfig, DuplicatePolicy
from spear_twisted.connections.listeners import Listeners, parse_description
from spear_twisted.connections.manager import ConnectionManager, EventSubscriber
from spear_twisted.connections.state import ConnectionState
from spear_twisted.connections.tls import TLSConfigurationError, server_tls_options

__all__ = [
    "MIN_BACKLOG",
    "Admission",
    "ConnectionManager",
    "ConnectionManagerConfig",
    "ConnectionState",
    "DuplicatePolicy",
    "EventSubscriber",
    "Listeners",
    "TLSConfigurationError",
    "parse_description",
    "server_tls_options",
]
