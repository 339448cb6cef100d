"""Pre-signed, expiring download URLs (what the hosted API hands out as ``downloadUrl``).

The signature is ``HMAC-SHA256(secret, "<query id>.<expires>")``; the secret is
32 random bytes kept in the data folder (``download.secret``, mode 0600), created
on first start and shared by every process using that folder. The download needs
no bearer token: holding an unexpired, untampered URL is the authorisation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from enum import StrEnum
from pathlib import Path

SECRET_FILE = "download.secret"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Verdict(StrEnum):
    OK = "ok"
    EXPIRED = "expired"
    BAD = "bad"


class UrlSigner:
    """Signs and checks (query id, expiry) pairs."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret needs at least 16 bytes")
        self._secret = secret

    @classmethod
    def from_data_dir(cls, data_dir: Path | str) -> UrlSigner:
        """The signer of a data folder (creates its secret once, race-free)."""
        path = Path(data_dir) / SECRET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # fails if another process won the race: use theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(bytes.fromhex(path.read_text().strip()))

    def signature(self, query_id: str, expires: int) -> str:
        message = f"{query_id}.{int(expires)}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, query_id: str, ttl_seconds: int, now: float | None = None) -> tuple[int, str]:
        """``(expires, signature)`` for a URL valid ``ttl_seconds`` from now."""
        expires = int((time.time() if now is None else now) + ttl_seconds)
        return expires, self.signature(query_id, expires)

    def verify(
        self, query_id: str, expires: int, signature: str, now: float | None = None
    ) -> Verdict:
        given = signature.strip().lower()
        if _HEX64.fullmatch(given) is None:
            return Verdict.BAD
        if not hmac.compare_digest(self.signature(query_id, expires), given):
            return Verdict.BAD
        if (time.time() if now is None else now) > expires:
            return Verdict.EXPIRED
        return Verdict.OK
