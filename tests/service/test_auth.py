"""Token helpers and the permission rules (pure functions, no server)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest

from service.auth import (LOCAL_PRINCIPAL, Principal, can_cancel, can_manage_users, can_read,
                          generate_token, hash_token, token_matches, token_prefix)
from service.store.entities import Job, User

JOB = Job(id="0123456789ab", name="j", owner="alice", status="running", spec={},
          created_at=datetime(2025, 1, 1, tzinfo=timezone.utc), num_trials=1)

ALICE = Principal("alice")
BOB = Principal("bob")
ADMIN = Principal("root", admin=True)


def test_tokens_are_random_and_long():
    tokens = {generate_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_hash_is_sha256_hex_and_not_the_token():
    token = generate_token()
    digest = hash_token(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert len(digest) == 64 and token not in digest
    assert token_matches(token, digest)
    assert not token_matches(token + "x", digest)


def test_any_string_hashes():
    assert len(hash_token("\ud800 lone surrogate")) == 64


def test_prefix_is_short():
    token = generate_token()
    assert token_prefix(token) == token[:8]


def test_everyone_reads_every_job():
    assert all(can_read(p, JOB) for p in (ALICE, BOB, ADMIN, LOCAL_PRINCIPAL))


@pytest.mark.parametrize("principal, allowed", [(ALICE, True), (BOB, False), (ADMIN, True),
                                                (LOCAL_PRINCIPAL, True)])
def test_owner_or_admin_cancels(principal, allowed):
    assert can_cancel(principal, JOB) is allowed


def test_user_management_needs_admin():
    assert can_manage_users(ADMIN) and not can_manage_users(ALICE)


def test_local_principal_and_principal_of_user():
    assert LOCAL_PRINCIPAL == Principal(name="local", admin=True)
    user = User(id=1, name="bob", admin=False, created_at=JOB.created_at)
    assert Principal.of(user) == BOB
    with pytest.raises(AttributeError):
        LOCAL_PRINCIPAL.admin = False  # type: ignore[misc]  # frozen
