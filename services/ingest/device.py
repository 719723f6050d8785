"""Who sent a request: the device certificate a trusted proxy verified, and the host's identity.

NGINX (compose) and ingress-nginx (Kubernetes) terminate mutual TLS and pass
the verified certificate upstream the way ingress-nginx's
``auth-tls-pass-certificate-to-upstream`` does: ``ssl-client-verify``
(``SUCCESS`` once verified) and ``ssl-client-cert`` (the PEM, URL-encoded).
The ingest believes them only from ``CARVE_TRUSTED_PROXIES``.

A host's identity, for its share of the service (``shared.quotas``), is its
certificate when one was verified, else its node key, else its address.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from shared.errors import InvalidRequest
from shared.proxies import Network, within

VERIFY_HEADER = "ssl-client-verify"
CERT_HEADER = "ssl-client-cert"
# A device certificate, URL-encoded, fits in far less; aiohttp caps a header at 8 KiB anyway.
_MAX_CERT_HEADER = 8192


@dataclass(frozen=True, slots=True)
class Device:
    """A verified client certificate: what the carve records of the device that sent it."""

    fingerprint_sha256: str
    subject_dn: str
    serial: str
    common_name: str

    def to_doc(self) -> dict[str, Any]:
        return {
            "fingerprint_sha256": self.fingerprint_sha256,
            "subject_dn": self.subject_dn,
            "serial": self.serial,
            "common_name": self.common_name,
        }


def parse_certificate(pem: bytes) -> Device:
    """The identity fields of a PEM certificate; ValueError if it is not one."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return Device(
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        subject_dn=cert.subject.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        common_name=common_name,
    )


# Every block of a carve carries the same header: parse each certificate once per process.
_parsed: LRUCache[str, Device] = LRUCache(maxsize=4096)


def device_of(request: web.Request, trusted: tuple[Network, ...]) -> Device | None:
    """The certificate a trusted proxy verified for this request, or None."""
    if not trusted or not within(request.remote, trusted):
        return None
    if request.headers.get(VERIFY_HEADER) != "SUCCESS":
        return None
    raw = request.headers.get(CERT_HEADER, "")
    if not raw:
        return None
    if (cached := _parsed.get(raw)) is not None:
        return cached
    if len(raw) > _MAX_CERT_HEADER:
        raise InvalidRequest(f"{CERT_HEADER} header is too long")
    try:
        device = _parsed[raw] = parse_certificate(unquote(raw).encode())
        return device
    except ValueError as exc:
        # The proxy said it verified a certificate it then failed to pass: refuse, never guess.
        raise InvalidRequest(f"{CERT_HEADER} header is not a PEM certificate") from exc


def node_key_header(request: web.Request) -> str:
    """The node key osquery 5.23+ sends as ``Authorization: NodeKey ...`` ("" for none)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme == "NodeKey" else ""


def host_identity(device: Device | None, node_key_sha256: str, address: str) -> str:
    """The key a host's share is counted under: certificate, else node key, else address."""
    if device is not None:
        return "cert:" + device.fingerprint_sha256
    if node_key_sha256:
        return "nk:" + node_key_sha256[:32]
    return "ip:" + hashlib.sha256(address.encode()).hexdigest()[:32]
