"""
The gRPC bridge: the ``spear.v1.SpearBridge`` service over HTTP/2, served by
a Twisted protocol driving the sans-IO ``h2`` library (no grpcio server, no
threads).

Modules, lowest first: ``spear_pb2`` (generated from ``spear.proto``),
``contract`` (method paths, protobuf <-> wire conversions), ``status``,
``framing`` and ``headers`` (gRPC rules, no Twisted), ``config``,
``methods`` (registry, contexts, backend interfaces), ``auth``, ``call``
(one call), ``h2connection`` (h2's connection without a per-frame trace),
``protocol`` (one connection), ``server`` (Factory and Service),
``endpoints`` (TLS with ALPN ``h2``), ``client`` (the Twisted client of
``Connect``), ``session`` (the Spear session over ``Connect``), ``channel``
(:class:`GrpcChannel`), ``backend`` (``Execute`` and ``Status`` on a
spearlet).

The names below are importable from this package; they load on first use,
so that the ``h2tls:`` endpoint plugin can import
:mod:`spear_twisted.bridge.endpoints` without pulling in HTTP/2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spear_twisted.bridge.auth import (
        AUTHORIZATION_KEY,
        BearerTokenAuthenticator,
        ICallAuthenticator,
        allow_any_caller,
        bearer_token,
    )
    from spear_twisted.bridge.backend import TaskExecutionBackend
    from spear_twisted.bridge.call import BridgeStream
    from spear_twisted.bridge.channel import GrpcChannel
    from spear_twisted.bridge.client import ConnectCall
    from spear_twisted.bridge.config import BridgeConfig, BridgeServiceConfig
    from spear_twisted.bridge.contract import (
        CONNECT_PATH,
        EXECUTE_PATH,
        SERVICE,
        STATUS_PATH,
        envelope_from_message,
        execute_call_from_request,
        execute_request_from_call,
        execute_response_from_result,
        execute_result_from_response,
        message_from_envelope,
    )
    from spear_twisted.bridge.endpoints import (
        H2TLSServerParser,
        client_tls_options,
        h2_tls_endpoint,
        h2_tls_options,
    )
    from spear_twisted.bridge.methods import (
        CallContext,
        IBridgeBackend,
        IConnectHandler,
        Method,
        MethodKind,
        MethodRegistry,
        spear_bridge_methods,
    )
    from spear_twisted.bridge.protocol import BridgeProtocol
    from spear_twisted.bridge.server import BridgeCounters, BridgeServer, BridgeService, make_spear_bridge
    from spear_twisted.bridge.session import (
        ConnectionBuilder,
        ConnectSession,
        EnvelopeSessionProtocol,
        EnvelopeStream,
        StreamTransport,
    )
    from spear_twisted.bridge.status import ERROR_CODE_KEY, GrpcError, StatusCode, status_for_error

_EXPORTS = {
    "auth": (
        "AUTHORIZATION_KEY",
        "BearerTokenAuthenticator",
        "ICallAuthenticator",
        "allow_any_caller",
        "bearer_token",
    ),
    "backend": ("TaskExecutionBackend",),
    "call": ("BridgeStream",),
    "channel": ("GrpcChannel",),
    "client": ("ConnectCall",),
    "config": ("BridgeConfig", "BridgeServiceConfig"),
    "contract": (
        "CONNECT_PATH",
        "EXECUTE_PATH",
        "SERVICE",
        "STATUS_PATH",
        "envelope_from_message",
        "execute_call_from_request",
        "execute_request_from_call",
        "execute_response_from_result",
        "execute_result_from_response",
        "message_from_envelope",
    ),
    "endpoints": ("H2TLSServerParser", "client_tls_options", "h2_tls_endpoint", "h2_tls_options"),
    "methods": (
        "CallContext",
        "IBridgeBackend",
        "IConnectHandler",
        "Method",
        "MethodKind",
        "MethodRegistry",
        "spear_bridge_methods",
    ),
    "protocol": ("BridgeProtocol",),
    "server": ("BridgeCounters", "BridgeServer", "BridgeService", "make_spear_bridge"),
    "session": (
        "ConnectSession",
        "ConnectionBuilder",
        "EnvelopeSessionProtocol",
        "EnvelopeStream",
        "StreamTransport",
    ),
    "status": ("ERROR_CODE_KEY", "GrpcError", "StatusCode", "status_for_error"),
}

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AUTHORIZATION_KEY",
    "CONNECT_PATH",
    "ERROR_CODE_KEY",
    "EXECUTE_PATH",
    "SERVICE",
    "STATUS_PATH",
    "BearerTokenAuthenticator",
    "BridgeConfig",
    "BridgeCounters",
    "BridgeProtocol",
    "BridgeServer",
    "BridgeService",
    "BridgeServiceConfig",
    "BridgeStream",
    "CallContext",
    "ConnectCall",
    "ConnectSession",
    "ConnectionBuilder",
    "EnvelopeSessionProtocol",
    "EnvelopeStream",
    "GrpcChannel",
    "GrpcError",
    "H2TLSServerParser",
    "IBridgeBackend",
    "ICallAuthenticator",
    "IConnectHandler",
    "Method",
    "MethodKind",
    "MethodRegistry",
    "StatusCode",
    "StreamTransport",
    "TaskExecutionBackend",
    "allow_any_caller",
    "bearer_token",
    "client_tls_options",
    "envelope_from_message",
    "execute_call_from_request",
    "execute_request_from_call",
    "execute_response_from_result",
    "execute_result_from_response",
    "h2_tls_endpoint",
    "h2_tls_options",
    "make_spear_bridge",
    "message_from_envelope",
    "spear_bridge_methods",
    "status_for_error",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
