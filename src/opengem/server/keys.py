"""API keys: created once, shown once, stored as a salted SHA-256 digest.

A key reads ``og_<key id>_<secret>``. The key id (public, 12 hex characters)
finds the stored row; the secret (32 random bytes, URL-safe base64) is checked
against ``sha256(salt || secret)`` in constant time. The store never holds the
key itself, so a leaked database does not leak usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from opengem.server.store import ApiKey, JobStore, week_of

PREFIX = "og"
_KEY_RE = re.compile(r"^og_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")


def digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def create_key(store: JobStore, name: str, quota_samples_per_week: int | None = None) -> str:
    """Store a new key and return it (the only time it exists in clear)."""
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name (who or what uses it)")
    if quota_samples_per_week is not None and quota_samples_per_week < 0:
        raise ValueError("the weekly sample quota must be 0 or more")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    store.add_key(
        ApiKey(
            key_id=key_id,
            name=name,
            salt=salt,
            digest=digest(salt, secret),
            quota_samples_per_week=quota_samples_per_week,
            created_at=time.time(),
        )
    )
    return f"{PREFIX}_{key_id}_{secret}"


def authenticate(store: JobStore, token: str) -> ApiKey | None:
    """The stored key a bearer token proves, or None (malformed, unknown, wrong, revoked)."""
    match = _KEY_RE.match(token.strip())
    if match is None:
        return None
    key = store.get_key(match.group(1))
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.digest, digest(key.salt, match.group(2))):
        return None
    return key


def quota_message(limit: int, remaining: int, requested: int) -> str:
    """The rate-limit text of the hosted API, plus what the refused query asked for."""
    return (
        f"The limit is {limit:,} samples per week. You have {max(remaining, 0):,} samples "
        f"remaining this week. This query asks for {requested:,} samples."
    )


def charge(store: JobStore, key: ApiKey, samples: int) -> str | None:
    """Count ``samples`` against the key's weekly quota; the refusal message, or None."""
    limit = key.quota_samples_per_week
    ok, used = store.consume_quota(key.key_id, week_of(), samples, limit)
    if ok or limit is None:
        return None
    return quota_message(limit, limit - used, samples)


def fail_and_refund(store: JobStore, job_id: str, worker_id: str | None, message: str) -> bool:
    """Fail a job (as :meth:`JobStore.fail`) and give its samples back to its key's
    quota for the week it was charged in: a key pays only for samples delivered.
    Returns whether this call failed the job (a job fails, and refunds, once)."""
    if not store.fail(job_id, worker_id, message):
        return False
    job = store.get(job_id)
    if job is not None and job.key_id and job.samples:
        store.consume_quota(job.key_id, week_of(job.created_at), -int(job.samples), None)
    return True
