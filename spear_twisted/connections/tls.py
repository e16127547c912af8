"""TLS server settings from PEM files, with optional ALPN."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.DOTALL)


class TLSConfigurationError(ValueError):
    """The certificate or key cannot be used; the message says which file and why."""


def server_tls_options(cert_path: str, key_path: str, alpn: Sequence[bytes] | None = None) -> Any:
    """
    Server TLS options for Twisted's ``listenSSL``/``SSL4ServerEndpoint``.

    ``cert_path`` holds the certificate, optionally followed by its chain;
    ``key_path`` the private key.  ``alpn`` lists the protocols offered in
    ALPN (``[b"h2"]`` for HTTP/2).
    """
    from twisted.internet import ssl

    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise TLSConfigurationError(f"cannot read TLS file: {e}") from None
    blocks = _PEM_CERTIFICATE.findall(cert_pem)
    if not blocks:
        raise TLSConfigurationError(f"{cert_path}: no PEM certificate found")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(blocks[0] + key_pem)  # type: ignore[no-untyped-call]
        chain = [ssl.Certificate.loadPEM(block).original for block in blocks[1:]]
    except Exception as e:
        raise TLSConfigurationError(f"{cert_path} / {key_path}: {e}") from None
    options: dict[str, Any] = {
        "privateKey": certificate.privateKey.original,
        "certificate": certificate.original,
        "extraCertChain": chain,
    }
    if alpn:
        options["acceptableProtocols"] = list(alpn)
    try:
        return ssl.CertificateOptions(**options)
    except Exception as e:
        raise TLSConfigurationError(f"{cert_path} / {key_path}: {e}") from None
