"""Signed messages: HMAC-SHA256 over job requests, cancels and control commands.

With ``signing_keys`` set (the same list on producers and workers), a producer signs what it
sends with the first key, and a worker accepts what any of the keys signed: to rotate, add the new
key at the front everywhere, then drop the old one once nothing signed with it is left. A worker
with keys refuses what is unsigned or does not verify, with a clear, recorded failure, and stays
up. Without keys nothing is signed or checked.

What is signed, and why:

* a **job request**, with its job id (``job``): a job that someone wrote into Redis without the key
  fails with :class:`~service.errors.JobSignatureError` and never runs; a signature copied to
  another job id does not verify. (Someone who can write to Redis can still queue the same signed
  job again under its own id.)
* a **cancel** push, with its job id, reason and time (``cancel``), and a **control command**
  whole (``control``): refused when unsigned, tampered with or older than :data:`MAX_AGE_S`
  (a replay).

A signature is ``v1:`` and the hex HMAC-SHA256, under the key, of the kind and the parts, each
length-prefixed so that no two different messages sign the same.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["MAX_AGE_S", "Signer"]

# A signed cancel or control command older than this is a replay: refused.
MAX_AGE_S = 60.0
_VERSION = "v1:"


class Signer:
    """Signs with the first key, verifies with any; without keys it signs nothing and accepts all."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        self._keys = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
        if any(not key for key in self._keys):
            raise ValueError("a signing key must not be empty")

    @property
    def enabled(self) -> bool:
        """True if messages are signed and checked."""
        return bool(self._keys)

    def sign(self, kind: str, *parts: str | bytes) -> str:
        """The signature of ``parts`` as a message of ``kind``; '' without keys."""
        if not self._keys:
            return ""
        return _VERSION + _mac(self._keys[0], kind, parts)

    def verify(self, signature: str | bytes, kind: str, *parts: str | bytes) -> bool:
        """True if ``signature`` is that of ``parts`` under one of the keys (always True without keys)."""
        if not self._keys:
            return True
        text = signature.decode(errors="replace") if isinstance(signature, bytes) else signature
        if not text.startswith(_VERSION):
            return False
        given = text[len(_VERSION) :]
        return any(hmac.compare_digest(given, _mac(key, kind, parts)) for key in self._keys)


def _mac(key: bytes, kind: str, parts: Sequence[str | bytes]) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (kind, *parts):
        data = part.encode() if isinstance(part, str) else part
        mac.update(len(data).to_bytes(8, "big"))
        mac.update(data)
    return mac.hexdigest()
