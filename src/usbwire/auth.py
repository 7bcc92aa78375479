"""Token authentication without certificates: a challenge-response that never sends the token.

The client asks for a challenge (a usbwire extension of the OP phase), the server answers a
fresh 32-byte nonce, the client answers its own nonce and
``HMAC-SHA256(token, "usbwire-auth-v1" || server_nonce || client_nonce)``. The server knows
every token by name and finds which one (if any) produced the proof. A recorded exchange is
useless later (fresh nonces) and reveals nothing of the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

CONTEXT = b"usbwire-auth-v1"


def nonce() -> bytes:
    return os.urandom(32)


def proof(token: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token.encode(), CONTEXT + server_nonce + client_nonce, hashlib.sha256).digest()


def verify(tokens: Mapping[str, str], server_nonce: bytes, client_nonce: bytes, given: bytes) -> str | None:
    """The name of the token that made ``given``, or None; every token is tried in constant time."""
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(proof(token, server_nonce, client_nonce), given):
            found = name
    return found
