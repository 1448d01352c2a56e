"""Which URLs we may send a token or PHI to: https, or plain http on this machine's loopback
(the test EHR, the demo). Used for JWKS URLs and for the EHR's fhirServer."""

from __future__ import annotations

import httpx

__all__ = ["LOOPBACK_HOSTS", "is_loopback_url", "secure_or_loopback"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def secure_or_loopback(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme == "https" or (parsed.scheme == "http" and parsed.host in LOOPBACK_HOSTS)


def is_loopback_url(url: str) -> bool:
    try:
        return httpx.URL(url).host in LOOPBACK_HOSTS
    except httpx.InvalidURL:
        return False
