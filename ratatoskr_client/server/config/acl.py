"""Who may read what: the users, the documents and their ACLs, as configured,
and the checks of that configuration. No I/O.

Part of the relay's configuration (:mod:`.config` re-exports every name here).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ...errors import ConfigError
from ...protocol.constants import EPHEMERAL_PREFIX

__all__ = [
    "PUBLIC",
    "Access",
    "AclEntry",
    "DocumentSpec",
    "Permission",
    "UserSpec",
    "validate_acl",
]

#: ACL principal meaning "every peer, anonymous ones included".
PUBLIC: Final = "public"

Permission = Literal["read", "write"]
_PERMISSIONS: Final = ("read", "write")


class Access(enum.Enum):
    """The answer to "may this user read this document?"."""

    ALLOWED = "allowed"
    DENIED = "denied"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class UserSpec:
    """A user who authenticates with ``token``; ``id`` and ``name`` are what peers see."""

    token: str
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class AclEntry:
    """Grants ``permission`` on a document to a user id, or to ``PUBLIC`` (everyone)."""

    principal: str
    permission: Permission = "read"


@dataclass(frozen=True, slots=True)
class DocumentSpec:
    """A document the relay knows. Its owner and every ACL principal may read it
    (both ``read`` and ``write`` imply read)."""

    id: str
    owner: str | None = None
    acl: tuple[AclEntry, ...] = ()


def validate_acl(
    users: Sequence[UserSpec], documents: Sequence[DocumentSpec], source: str | None
) -> None:
    """Raise :class:`ConfigError` (naming the file ``source`` and the entry)
    unless every user has a token, id and name, tokens and ids are unique, and
    every document has a unique id that is not a relay channel's, an owner and
    ACL principals that are configured users (or ``PUBLIC``), and read or
    write permissions."""
    tokens: set[str] = set()
    ids: set[str] = set()
    for i, user in enumerate(users):
        entry = f"users[{i}]" + (f" (id {user.id!r})" if isinstance(user.id, str) else "")
        for attr in ("token", "id", "name"):
            value = getattr(user, attr)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{attr!r} must be a non-empty string", path=source, entry=entry)
        if user.id == PUBLIC:
            raise ConfigError(
                f"user id {PUBLIC!r} is reserved for the public ACL principal",
                path=source,
                entry=entry,
            )
        if user.token in tokens:
            raise ConfigError("token is already used by another user", path=source, entry=entry)
        if user.id in ids:
            raise ConfigError(f"duplicate user id {user.id!r}", path=source, entry=entry)
        tokens.add(user.token)
        ids.add(user.id)

    doc_ids: set[str] = set()
    for i, doc in enumerate(documents):
        entry = f"documents[{i}]" + (f" (id {doc.id!r})" if isinstance(doc.id, str) else "")
        if not isinstance(doc.id, str) or not doc.id.strip():
            raise ConfigError("'id' must be a non-empty string", path=source, entry=entry)
        if doc.id.startswith(EPHEMERAL_PREFIX):
            raise ConfigError(
                f"ids starting with {EPHEMERAL_PREFIX!r} are public relay channels and "
                "cannot be configured",
                path=source,
                entry=entry,
            )
        if doc.id in doc_ids:
            raise ConfigError(f"duplicate document id {doc.id!r}", path=source, entry=entry)
        doc_ids.add(doc.id)
        if doc.owner is not None and doc.owner not in ids:
            raise ConfigError(
                f"owner {doc.owner!r} is not a user defined in [[users]]",
                path=source,
                entry=entry,
            )
        for j, acl in enumerate(doc.acl):
            where = f"{entry}.acl[{j}]"
            if acl.permission not in _PERMISSIONS:
                raise ConfigError(
                    f"permission must be 'read' or 'write', got {acl.permission!r}",
                    path=source,
                    entry=where,
                )
            if acl.principal != PUBLIC and acl.principal not in ids:
                raise ConfigError(
                    f"principal {acl.principal!r} is neither 'public' nor a user defined "
                    "in [[users]]",
                    path=source,
                    entry=where,
                )
