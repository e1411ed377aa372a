"""Upstream Ratatoskr's access rules, reproduced exactly. No I/O: the
documents and ACL entries are read through a :class:`UpstreamReader` (the
relay's aiohttp layer gives one over upstream's SQLite database, opened
read-only, in a thread; the tests give one over a database they build).

Source: upstream commit ``84a3a06``, ``src/sync/permissions.ts``
(``canReadDocument``, ``mapAutomergeIdToOurId``), ``src/lib/acl.ts``
(``resolvePermissions``), ``src/lib/types.ts`` (``parseDocumentId``) and the
WebSocket's own checks in ``src/sync/network-adapter.ts`` (a document must
exist, by automerge id or by id, before the read check). Upstream's REST route
``GET /api/v1/documents/:id`` is *not* what is reproduced: it looks up the
stored id only and does not follow document references, so a relay asking it
would refuse people the WebSocket lets in.

The rules, for a read:

1. ``eph:`` ids: everyone (relay-only documents).
2. The document must exist: a row whose ``automerge_id`` is the id, else whose
   ``id`` is; otherwise ``document_not_found``.
3. The id is mapped to upstream's own id (ids starting ``doc:``/``app:``/
   ``eph:`` are kept; others map through ``automerge_id``, then ``id``).
   An ``app:`` id, or a document whose ``type`` starts with ``app:``: its owner
   only.
4. Otherwise ``resolvePermissions``: the owner may; each ACL entry grants its
   permission when its principal is ``public``, the user, or a document
   (id or automerge id) the user may read by these same rules, recursively —
   at most 10 levels deep, a cycle granting nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from ..config import Access

__all__ = ["MAX_ACL_DEPTH", "UpstreamDocument", "UpstreamReader", "upstream_access"]

#: ``src/lib/acl.ts``: MAX_ACL_DEPTH.
MAX_ACL_DEPTH: Final = 10
_LOCAL_ID: Final = re.compile(r"^[A-Za-z0-9._-]+$")
_LOCAL_ID_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class UpstreamDocument:
    """The columns of upstream's ``documents`` row the rules read."""

    id: str
    owner_id: str
    automerge_id: str | None = None
    type: str | None = None


class UpstreamReader(Protocol):
    """Reads upstream's metadata (``src/storage/database.ts``)."""

    def document(self, document_id: str) -> UpstreamDocument | None:
        """``getDocument``: the row whose ``id`` is ``document_id``."""

    def document_by_automerge_id(self, automerge_id: str) -> UpstreamDocument | None:
        """``getDocumentByAutomergeId``: the row whose ``automerge_id`` is this."""

    def acl(self, document_id: str) -> Sequence[tuple[str, str]]:
        """``getDocumentACL``: (principal, permission) of the document's entries."""


def _prefix(doc_id: str) -> str | None:
    """``parseDocumentId``'s prefix, or None where it throws."""
    prefix, local = "doc", doc_id
    for candidate in ("eph", "app", "doc"):
        if doc_id.startswith(candidate + ":"):
            prefix, local = candidate, doc_id[4:]
            break
    if not local or len(local) > _LOCAL_ID_MAX or local in (".", ".."):
        return None
    if not _LOCAL_ID.match(local):
        return None
    return prefix


def _resolve(reader: UpstreamReader, doc_id: str) -> UpstreamDocument | None:
    """``resolveDocumentMetadata``: by automerge id, then by id."""
    return reader.document_by_automerge_id(doc_id) or reader.document(doc_id)


def _our_id(reader: UpstreamReader, doc_id: str) -> str:
    """``mapAutomergeIdToOurId``."""
    if doc_id.startswith(("doc:", "app:", "eph:")):
        return doc_id
    doc = _resolve(reader, doc_id)
    return doc.id if doc is not None else doc_id


def _can_read(
    reader: UpstreamReader, doc_id: str, user_id: str | None, depth: int, visited: frozenset[str]
) -> bool:
    """``resolvePermissions(...).canRead`` (read or write both let in)."""
    if doc_id in visited:
        return False
    path = visited | {doc_id}
    our = _our_id(reader, doc_id)
    doc = reader.document(our)
    if doc is None:
        return False
    if user_id is not None and doc.owner_id == user_id:
        return True
    for principal, _permission in reader.acl(our):
        if principal == "public":
            return True
        if user_id is not None and principal == user_id:
            return True
        if depth < MAX_ACL_DEPTH and _can_read(reader, principal, user_id, depth + 1, path):
            return True
    return False


def upstream_access(reader: UpstreamReader, document_id: str, user_id: str | None) -> Access:
    """What upstream's WebSocket answers when ``user_id`` (None: anonymous)
    asks for ``document_id``: ALLOWED, DENIED (``permission_denied``) or
    NOT_FOUND (``document_not_found``)."""
    if document_id.startswith("eph:"):
        return Access.ALLOWED
    if _resolve(reader, document_id) is None:
        return Access.NOT_FOUND
    our = _our_id(reader, document_id)
    if _prefix(our) == "app":
        doc = reader.document(our)
        allowed = user_id is not None and doc is not None and doc.owner_id == user_id
        return Access.ALLOWED if allowed else Access.DENIED
    resolved = _resolve(reader, document_id)
    if resolved is not None and resolved.type is not None and resolved.type.startswith("app:"):
        allowed = user_id is not None and resolved.owner_id == user_id
        return Access.ALLOWED if allowed else Access.DENIED
    return Access.ALLOWED if _can_read(reader, our, user_id, 0, frozenset()) else Access.DENIED
