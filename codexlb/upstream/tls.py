"""Whom upstream calls trust: the system's CA certificates, wherever this Linux distribution keeps them.

Python's OpenSSL looks for them where the machine that built it kept them. The single binary carries
the build machine's OpenSSL, so on another distribution (Fedora keeps them in /etc/pki, Alpine in
/etc/ssl/cert.pem) it would find none and refuse every TLS connection. So the first bundle found in
the usual places is added (the list Go's crypto/x509 searches). SSL_CERT_FILE or SSL_CERT_DIR, when
set, are the operator's choice and are used alone.
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Mapping

CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",                 # Debian, Ubuntu, Arch, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",                   # Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",                             # openSUSE
    "/etc/pki/tls/cacert.pem",                            # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7
    "/etc/ssl/cert.pem",                                  # Alpine, macOS
)


def system_ca_file(environ: Mapping[str, str] = os.environ) -> str | None:
    """The system CA bundle to add, or None when the operator named one or none is found."""
    if environ.get("SSL_CERT_FILE") or environ.get("SSL_CERT_DIR"):
        return None
    return next((path for path in CA_FILES if os.path.isfile(path)), None)


def build_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


@functools.cache
def client_context() -> ssl.SSLContext:
    """The verifying TLS context of every upstream connection (built once: loading a bundle takes a while)."""
    return build_context(system_ca_file())
