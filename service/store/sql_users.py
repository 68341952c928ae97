"""Users and their API tokens, for :class:`~service.store.sql.SqlJobStore`.

A mixin, apart from the jobs and trials: the same short transactions
(``self._write()`` / ``self._read()`` of the store it is mixed into), on the
``users`` and ``tokens`` tables. Only a token's hash is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from service.auth import generate_token, hash_token, token_prefix
from service.store import entities as e
from service.store.base import Conflict, NotFound
from service.store.rows import check_name, check_strings, findable, to_user
from service.store.schema import tokens, users


class SqlUsers:
    """``create_user``, ``issue_token``, ``authenticate``, ``list_users``, ``revoke_user``."""

    _write: Any
    _read: Any

    def create_user(self, name: str, admin: bool = False) -> tuple[e.User, str]:
        check_name(name, "user name")
        check_strings(users, {"name": name})
        token, now = generate_token(), e.utcnow()
        try:
            with self._write() as conn:
                row = conn.execute(users.insert().values(
                    name=name, admin=bool(admin), revoked=False, created_at=now,
                ).returning(*users.c)).one()
                self._insert_token(conn, row.id, token, now)
        except IntegrityError as exc:
            raise Conflict(f"user {name!r} already exists") from exc
        return to_user(row), token

    @staticmethod
    def _insert_token(conn: Connection, user_id: int, token: str, now: datetime) -> None:
        conn.execute(tokens.insert().values(user_id=user_id, token_hash=hash_token(token),
                                            prefix=token_prefix(token), created_at=now))

    def issue_token(self, name: str) -> str:
        if not findable(name):
            raise NotFound(f"no user {name!r}")
        token, now = generate_token(), e.utcnow()
        with self._write() as conn:
            user_id = conn.execute(
                users.update().where(users.c.name == name).values(revoked=False)
                .returning(users.c.id)).scalar_one_or_none()
            if user_id is None:
                raise NotFound(f"no user {name!r}")
            self._insert_token(conn, user_id, token, now)
        return token

    def authenticate(self, token: str) -> e.User | None:
        if not isinstance(token, str) or not token:  # hashing makes any other string safe
            return None
        query = (sa.select(*users.c).join(tokens, tokens.c.user_id == users.c.id)
                 .where(tokens.c.token_hash == hash_token(token), tokens.c.revoked_at.is_(None),
                        users.c.revoked.is_(False)))
        with self._read() as conn:
            row = conn.execute(query).first()
        return to_user(row) if row is not None else None

    def list_users(self) -> list[e.User]:
        with self._read() as conn:
            return [to_user(r) for r in conn.execute(sa.select(*users.c).order_by(users.c.id))]

    def revoke_user(self, name: str) -> bool:
        if not findable(name):
            return False
        now = e.utcnow()
        with self._write() as conn:
            user_id = conn.execute(
                users.update().where(users.c.name == name).values(revoked=True)
                .returning(users.c.id)).scalar_one_or_none()
            if user_id is None:
                return False
            conn.execute(tokens.update().where(tokens.c.user_id == user_id,
                                               tokens.c.revoked_at.is_(None))
                         .values(revoked_at=now))
        return True
