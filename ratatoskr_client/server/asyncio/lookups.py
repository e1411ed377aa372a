"""The look-ups the relay's core asks for, done: HTTP requests to upstream's
userinfo, to a JWKS URL and to a permission callback, and reads of upstream's
SQLite database (read-only, in a thread). Only I/O and translation: what a
look-up means and what its answer does is the core's
(:mod:`ratatoskr_client.server.core.identities`).

Every look-up is answered, whatever happens: a timeout, a refused connection,
a 5xx or an unreadable body become :class:`~..core.identities.Unavailable`
(the core fails closed), so no connection waits for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiohttp

from ..config import (
    Access,
    HttpPermissions,
    JwtTokens,
    UpstreamApiTokens,
    UpstreamDatabase,
)
from ..core.identities import Identity, Lookup, Refused, Unavailable
from ..core.relay import RelayCore
from ..core.upstream_acl import UpstreamDocument, upstream_access

__all__ = ["LookupRunner", "SqliteReader"]

log = logging.getLogger("ratatoskr_client.server")


class SqliteReader:
    """:class:`~..core.upstream_acl.UpstreamReader` over upstream's database,
    opened read-only (``file:...?mode=ro``): the relay never writes to it."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _row(self, column: str, value: str) -> UpstreamDocument | None:
        row = self._db.execute(
            f"SELECT id, owner_id, automerge_id, type FROM documents WHERE {column} = ?",
            (value,),
        ).fetchone()
        return None if row is None else UpstreamDocument(*row)

    def document(self, document_id: str) -> UpstreamDocument | None:
        """The row whose ``id`` is ``document_id``."""
        return self._row("id", document_id)

    def document_by_automerge_id(self, automerge_id: str) -> UpstreamDocument | None:
        """The row whose ``automerge_id`` is ``automerge_id``."""
        return self._row("automerge_id", automerge_id)

    def acl(self, document_id: str) -> Sequence[tuple[str, str]]:
        """The document's ACL entries as (principal, permission)."""
        return self._db.execute(
            "SELECT principal, permission FROM acl_entries WHERE document_id = ?", (document_id,)
        ).fetchall()


def _read_upstream(path: str, user: str | None, doc_id: str) -> Access:
    reader = SqliteReader(path)
    try:
        return upstream_access(reader, doc_id, user)
    finally:
        reader.close()


class LookupRunner:
    """Answers the core's look-ups (it is the core's ``request``)."""

    def __init__(self, core: RelayCore) -> None:
        self._core = core
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def __call__(self, lookup: Lookup) -> None:
        task = asyncio.get_running_loop().create_task(self._run(lookup))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel the look-ups in flight and close the HTTP session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _run(self, lookup: Lookup) -> None:
        core = self._core
        delay = lookup.not_before - core.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            result = await self._do(lookup)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever failed, the core gets an answer
            log.warning("%s look-up failed: %r", lookup.kind, exc)
            result = Unavailable(f"{lookup.kind} look-up failed")
        core.answer(lookup, result)

    async def _do(self, lookup: Lookup) -> Any:
        config = self._core.config
        if lookup.kind == "upstream-acl":
            provider = config.permissions
            assert isinstance(provider, UpstreamDatabase)
            user, doc_id = lookup.key
            return await asyncio.to_thread(_read_upstream, provider.database, user or None, doc_id)
        if lookup.kind == "permission":
            http = config.permissions
            assert isinstance(http, HttpPermissions)
            return await self._permission(http, lookup)
        identity = config.identity[lookup.provider]
        if lookup.kind == "userinfo":
            assert isinstance(identity, UpstreamApiTokens)
            return await self._userinfo(identity, lookup.key[0])
        assert isinstance(identity, JwtTokens)
        return await self._jwks(identity)

    async def _get_json(
        self, method: str, url: str, timeout: float, **kwargs: Any
    ) -> tuple[int, Any]:
        http = self._session()
        async with http.request(
            method, url, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs
        ) as response:
            if response.status != 200:
                return response.status, None
            return 200, json.loads(await response.read())

    async def _userinfo(self, provider: UpstreamApiTokens, token: str) -> Any:
        status, body = await self._get_json(
            "GET",
            provider.userinfo_url,
            provider.timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
        if status in (401, 403, 404):
            return Refused()
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return Unavailable(f"userinfo answered {status}")
        name = body.get("name")
        return Identity(body["id"], name if isinstance(name, str) and name else body["id"])

    async def _jwks(self, provider: JwtTokens) -> Any:
        import jwt

        assert provider.jwks_url is not None
        status, body = await self._get_json("GET", provider.jwks_url, provider.timeout)
        if status != 200 or not isinstance(body, dict):
            return Unavailable(f"the JWKS URL answered {status}")
        keys: dict[str, Any] = {}
        for jwk in body.get("keys", ()):
            with contextlib.suppress(jwt.PyJWKError, jwt.InvalidKeyError, TypeError, KeyError):
                key = jwt.PyJWK(jwk)
                keys[jwk.get("kid", "")] = key.key
        return keys

    async def _permission(self, provider: HttpPermissions, lookup: Lookup) -> Any:
        user, doc_id = lookup.key
        status, body = await self._get_json(
            "POST",
            provider.url,
            provider.timeout,
            json={"userId": user or None, "documentId": doc_id},
        )
        if status == 404:
            return Access.NOT_FOUND
        if status == 403:
            return Access.DENIED
        if status != 200 or not isinstance(body, dict):
            return Unavailable(f"the permission callback answered {status}")
        allowed = body.get("read") is True or body.get("write") is True
        return Access.ALLOWED if allowed else Access.DENIED
