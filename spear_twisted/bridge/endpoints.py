"""
HTTP/2 over TLS with ALPN ``h2``, which gRPC clients require.

Twisted's stock ``ssl:`` endpoint description has no ALPN setting, so the
bridge brings its own:

* :func:`h2_tls_endpoint` builds the listening endpoint in code
  (:func:`client_tls_options` is the client's side);
* the ``h2tls:`` description (a Twisted endpoint plugin) does the same from
  configuration, with the ``ssl:`` spellings::

      h2tls:port=50443:certKey=/etc/spear/cert.pem:privateKey=/etc/spear/key.pem:interface=127.0.0.1

  ``certKey`` may hold the certificate followed by its chain; ``interface``
  defaults to ``127.0.0.1`` (loopback), ``backlog`` to 50.

This module is imported by the plugin: it stays light (no ``h2`` here).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

from spear_twisted.connections.tls import TLSConfigurationError, server_tls_options

#: The ALPN protocol id of HTTP/2 over TLS.
ALPN_H2 = b"h2"

#: The endpoint description prefix of :class:`H2TLSServerParser`.
PREFIX = "h2tls"


def h2_tls_options(cert_path: str, key_path: str) -> Any:
    """
    TLS options offering (only) ALPN ``h2``, from PEM files.

    :raises spear_twisted.connections.tls.TLSConfigurationError: naming the
        file that cannot be read or used.
    """
    return server_tls_options(cert_path, key_path, alpn=[ALPN_H2])


def h2_tls_endpoint(
    reactor: Any,
    port: int,
    cert_path: str,
    key_path: str,
    *,
    interface: str = "127.0.0.1",
    backlog: int = 50,
) -> SSL4ServerEndpoint:
    """A TLS server endpoint on ``interface:port`` that negotiates ``h2`` with ALPN."""
    return SSL4ServerEndpoint(  # type: ignore[no-untyped-call]
        reactor, port, h2_tls_options(cert_path, key_path), backlog=backlog, interface=interface
    )


def client_tls_options(host: str, ca_path: str) -> Any:
    """
    Client TLS options for a server named ``host``, trusting the PEM
    certificates of ``ca_path`` and offering ALPN ``h2``.

    :raises spear_twisted.connections.tls.TLSConfigurationError: naming the
        file that cannot be read or used.
    """
    from twisted.internet import ssl

    try:
        with open(ca_path, "rb") as f:
            pem = f.read()
        authority = ssl.Certificate.loadPEM(pem)
    except OSError as e:
        raise TLSConfigurationError(f"cannot read TLS file: {e}") from None
    except Exception as e:
        raise TLSConfigurationError(f"{ca_path}: {e}") from None
    return ssl.optionsForClientTLS(host, trustRoot=authority, acceptableProtocols=[ALPN_H2])


@implementer(IPlugin, IStreamServerEndpointStringParser)
class H2TLSServerParser:
    """The ``h2tls:`` endpoint description (see the module docstring)."""

    prefix = PREFIX

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> SSL4ServerEndpoint:
        """The endpoint of an ``h2tls:`` description's options (see the module docstring)."""
        options = {name: str(value) for name, value in kwargs.items()}
        if args:
            options.setdefault("port", str(args[0]))
        unknown = sorted(set(options) - _OPTIONS)
        if unknown or len(args) > 1:
            raise ValueError(f"h2tls: unknown options {unknown or list(args[1:])}; known: {sorted(_OPTIONS)}")
        if "port" not in options:
            raise ValueError("h2tls: needs port=")
        if "privateKey" not in options:
            raise ValueError("h2tls: needs privateKey= (a PEM private key file)")
        return h2_tls_endpoint(
            reactor,
            int(options["port"]),
            options.get("certKey") or options["privateKey"],
            options["privateKey"],
            interface=options.get("interface", "127.0.0.1"),
            backlog=int(options.get("backlog", "50")),
        )


_OPTIONS = frozenset({"port", "certKey", "privateKey", "interface", "backlog"})
