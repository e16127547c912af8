"""
Twisted endpoint plugin: ``h2tls:`` listens for HTTP/2 over TLS with ALPN
``h2`` (the gRPC bridge's TLS transport; see spear_twisted.bridge.endpoints).
"""

from spear_twisted.bridge.endpoints import H2TLSServerParser

h2tls = H2TLSServerParser()
