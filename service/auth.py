"""Bearer tokens and who may do what.

Tokens are 32 random bytes (``secrets.token_urlsafe(32)``), so unlike passwords
they need no salt or slow hash: nobody can enumerate 2**256 candidates, and a
plain SHA-256 lets the store find a token by an indexed lookup of its hash. The
store keeps only that hash (and a short prefix to tell tokens apart in
listings), so a copy of the database does not let anyone call the API.

The permission rules are pure functions of a :class:`Principal` and a job, so
they are tested without a server and every endpoint applies the same rule. The
team reads every job (it is a shared tuning service: seeing others' results is
the point), but only a job's owner or an admin may cancel it.

This module imports nothing from the store at run time, so the store can use
its hashing helpers without an import cycle.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from service.store.entities import User

TOKEN_BYTES = 32
#: Characters of the plaintext kept in the clear, to recognise a token in listings.
TOKEN_PREFIX_LEN = 8


def generate_token() -> str:
    """A new bearer token (43 URL-safe characters, 256 bits of entropy)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored in place of ``token``."""
    # surrogatepass: any str a caller hands us hashes (to a digest no token has),
    # rather than raising in the middle of authentication.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_prefix(token: str) -> str:
    """The short, non-secret start of a token kept beside its hash."""
    return token[:TOKEN_PREFIX_LEN]


def token_matches(token: str, token_hash: str) -> bool:
    """Constant-time check of a plaintext against a stored hash."""
    return hmac.compare_digest(hash_token(token), token_hash)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user name that owns new jobs, and whether they are admin."""

    name: str
    admin: bool = False

    @classmethod
    def of(cls, user: "User") -> "Principal":
        return cls(name=user.name, admin=user.admin)


#: The caller when authentication is off (REGTUNE_AUTH=off, a single-user
#: laptop setup): one admin, so every action is allowed.
LOCAL_PRINCIPAL = Principal(name="local", admin=True)


class _Owned(Protocol):
    @property
    def owner(self) -> str: ...


def can_read(principal: Principal, job: _Owned) -> bool:
    """Everyone on the team may read every job, its trials and events."""
    return True


def can_cancel(principal: Principal, job: _Owned) -> bool:
    """The job's owner or an admin may cancel it."""
    return principal.admin or principal.name == job.owner


def can_manage_users(principal: Principal) -> bool:
    """Only admins create users, issue tokens for others, or revoke."""
    return principal.admin
