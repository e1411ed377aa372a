"""The admin API's rules: who may call it, what each call answers and does.
No I/O: the aiohttp layer (:mod:`ratatoskr_client.server.asyncio.admin`)
routes requests here and writes the answers as JSON.

Every answer is a JSON-able ``dict``; every refusal is an :class:`AdminError`
with an HTTP status and a machine-readable ``code`` (``docs/server.md``,
"Admin API"). Times are given as seconds on the relay's clock converted by
the caller (``wall``): the core's clock is monotonic.

In a cluster the answers include what this relay knows of the others
(:class:`RemoteView`, the cluster's view of remote peers): the nodes, every
remote peer and the documents they are present in *as far as this relay
tracks them* (a relay follows the remote presence of the documents it has
local peers in).
"""

from __future__ import annotations

import base64
import hmac
import itertools
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sized
from typing import Any, Final, Protocol

from ...errors import PayloadError
from ...protocol import UserInfo
from ...protocol.writers import encode_payload
from .connection import Connection
from .relay import RelayCore
from .roster import user_key

__all__ = [
    "DEFAULT_PAGE",
    "MAX_DOCUMENTS_SHOWN",
    "MAX_PAGE",
    "MAX_PEERS_SHOWN",
    "MAX_REASON",
    "AdminError",
    "RemotePeerView",
    "RemoteView",
    "apply_disconnect",
    "authorized",
    "connections",
    "dashboard",
    "disconnect",
    "disconnect_command",
    "document_presence",
    "documents",
    "jsonable",
    "nodes",
    "publish",
    "publish_data",
    "remote_targets",
]

#: Connections per page of ``GET /admin/api/connections`` unless ``limit`` says.
DEFAULT_PAGE: Final = 100
#: The largest ``limit``.
MAX_PAGE: Final = 1000
#: The longest disconnect reason (characters): it goes into an error frame.
MAX_REASON: Final = 200


class AdminError(Exception):
    """A refused admin call: ``status`` (HTTP), ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The error's JSON body."""
        return {"error": self.code, "message": self.message}


class RemotePeerView(Protocol):
    """A peer connected to another relay of the cluster."""

    @property
    def node(self) -> str:
        """The node it is connected to."""

    @property
    def peer_id(self) -> str:
        """Its peer id."""

    @property
    def user(self) -> UserInfo:
        """Who it is."""

    @property
    def docs(self) -> Collection[str]:
        """The documents it is present in, as far as this relay tracks them."""


class RemoteView(Protocol):
    """What this relay knows of the other relays of its cluster."""

    node_id: str

    def nodes(self) -> tuple[str, ...]:
        """The other nodes."""

    def remote_peers(self) -> Iterable[RemotePeerView]:
        """Every peer connected to another node."""


def authorized(expected: str | None, header: str | None) -> bool:
    """True if the ``Authorization`` header carries the admin token, compared
    in constant time (the time taken does not tell how much of a guess was
    right). ``expected`` None: there is no admin API at all (the caller
    answers 404 before asking)."""
    if expected is None or header is None:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _user(conn: Connection) -> dict[str, Any]:
    return {
        "peerId": conn.peer_id,
        "userId": None if conn.is_anonymous else conn.user_id,
        "user": user_key(conn),
        "name": conn.name,
        "anonymous": conn.is_anonymous,
    }


def _remote_user(peer: RemotePeerView) -> dict[str, Any]:
    user = peer.user
    anonymous = user.is_anonymous or user.id is None
    return {
        "peerId": peer.peer_id,
        "userId": None if anonymous else user.id,
        "user": f"anon:{peer.peer_id}" if anonymous else user.id,
        "name": user.name or peer.peer_id,
        "anonymous": anonymous,
    }


def nodes(core: RelayCore, remote: RemoteView | None) -> dict[str, Any]:
    """``GET /admin/api/nodes``: this relay and the others it knows."""
    stats = core.stats()
    here: dict[str, Any] = {
        "node": remote.node_id if remote is not None else core.server_peer_id,
        "self": True,
        "peers": stats.peers,
        "documents": stats.documents,
        "memberships": stats.memberships,
        "relayed": core.counters.relayed_local + core.counters.relayed_remote,
    }
    answer: list[dict[str, Any]] = [here]
    if remote is not None:
        counts: dict[str, int] = dict.fromkeys(remote.nodes(), 0)
        for peer in remote.remote_peers():
            counts[peer.node] = counts.get(peer.node, 0) + 1
        answer += [{"node": n, "self": False, "peers": c} for n, c in counts.items()]
    return {"nodes": answer}


def documents(core: RelayCore, remote: RemoteView | None) -> dict[str, Any]:
    """``GET /admin/api/documents``: every document with someone present, with
    its counts (``local`` peers here, ``remote`` ones elsewhere as tracked)."""
    table: dict[str, dict[str, Any]] = {}
    users: dict[str, set[str]] = {}
    for conn in core.peers():
        for doc in conn.docs:
            row = table.setdefault(doc, {"id": doc, "peers": 0, "local": 0, "remote": 0})
            row["peers"] += 1
            row["local"] += 1
            users.setdefault(doc, set()).add(user_key(conn))
    if remote is not None:
        for peer in remote.remote_peers():
            key = _remote_user(peer)["user"]
            for doc in peer.docs:
                row = table.setdefault(doc, {"id": doc, "peers": 0, "local": 0, "remote": 0})
                row["peers"] += 1
                row["remote"] += 1
                users.setdefault(doc, set()).add(key)
    for doc, row in table.items():
        row["users"] = len(users.get(doc, ()))
    return {"documents": sorted(table.values(), key=lambda r: (-r["peers"], r["id"]))}


def document_presence(
    core: RelayCore,
    remote: RemoteView | None,
    document_id: str,
    wall: Callable[[float], float],
) -> dict[str, Any]:
    """``GET /admin/api/documents/{id}``: who is present (peers, with when
    they joined: ``since``, epoch seconds by ``wall``), as which users, and
    the state each shared (``state``: peer id -> its latest Presence state).
    A document nobody is in has empty lists (presence is not a resource that
    can be missing)."""
    since = core.roster.since(document_id)
    peers: list[dict[str, Any]] = []
    for conn in core.members(document_id):
        row = _user(conn)
        row["node"] = remote.node_id if remote is not None else core.server_peer_id
        joined = since.get(conn.peer_id)
        row["since"] = None if joined is None else round(wall(joined), 3)
        peers.append(row)
    if remote is not None:
        for peer in remote.remote_peers():
            if document_id in peer.docs:
                row = _remote_user(peer)
                row["node"] = peer.node
                row["since"] = None
                peers.append(row)
    users: dict[str, dict[str, Any]] = {}
    for row in peers:
        entry = users.setdefault(
            row["user"], {"user": row["user"], "name": row["name"], "connections": 0}
        )
        entry["connections"] += 1
    return {
        "id": document_id,
        "peers": peers,
        "users": list(users.values()),
        "state": jsonable(core.peer_states(document_id)),
    }


def jsonable(value: Any) -> Any:
    """``value`` (a CBOR value a peer shared) as strict JSON can carry it:
    bytes as ``{"$bytes": "<base64>"}``, non-finite floats as None, other
    values JSON lacks (dates, bignums beyond JSON's reach are fine) as their
    text. What a peer shares can never make an answer invalid JSON."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    return str(value)


#: Documents and peers per document a dashboard snapshot shows at most (the
#: rest are counted).
MAX_DOCUMENTS_SHOWN: Final = 50
MAX_PEERS_SHOWN: Final = 200


def _cursor(state: Mapping[str, Any]) -> list[float] | None:
    """The ``cursor`` a peer shares, if it is two finite numbers."""
    cursor = state.get("cursor")
    if (
        isinstance(cursor, list)
        and len(cursor) == 2
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in cursor
        )
    ):
        return [float(cursor[0]), float(cursor[1])]
    return None


def dashboard(
    core: RelayCore, remote: RemoteView | None, rate: float, wall: Callable[[float], float]
) -> dict[str, Any]:
    """What the dashboard shows: the nodes, the connections (a page of
    :data:`MAX_PEERS_SHOWN`), the :data:`MAX_DOCUMENTS_SHOWN` busiest
    documents with who is present (at most :data:`MAX_PEERS_SHOWN` each) and
    their cursors (a peer's shared ``cursor`` ``[x, y]`` of finite numbers),
    and ``rate``, the relayed messages per second."""
    listed = documents(core, remote)["documents"]
    docs = []
    for row in listed[:MAX_DOCUMENTS_SHOWN]:
        presence = document_presence(core, remote, row["id"], wall)
        states = presence["state"]
        peers = []
        for peer in presence["peers"][:MAX_PEERS_SHOWN]:
            state = states.get(peer["peerId"], {})
            peer["cursor"] = _cursor(state)
            chosen = state.get("name")
            if isinstance(chosen, str) and chosen:
                peer["chosenName"] = chosen[:64]
            peers.append(peer)
        docs.append(
            {
                "id": row["id"],
                "peers": peers,
                "count": row["peers"],
                "users": row["users"],
                "hidden": max(0, row["peers"] - len(peers)),
            }
        )
    page = connections(core, remote, {"limit": str(MAX_PEERS_SHOWN)})
    return {
        "nodes": nodes(core, remote)["nodes"],
        "peers": [{k: v for k, v in c.items() if k != "address"} for c in page["connections"]],
        "peerCount": page["total"],
        "documents": docs,
        "documentCount": len(listed),
        "connections": core.stats().peers,
        "rate": round(rate, 1),
    }


def _page(query: Mapping[str, str]) -> tuple[int, int]:
    def number(key: str, default: int, low: int, high: int) -> int:
        text = query.get(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise AdminError(400, "invalid_request", f"{key} must be an integer") from None
        if not low <= value <= high:
            raise AdminError(400, "invalid_request", f"{key} must be from {low} to {high}")
        return value

    return number("offset", 0, 0, 2**31), number("limit", DEFAULT_PAGE, 1, MAX_PAGE)


def connections(
    core: RelayCore, remote: RemoteView | None, query: Mapping[str, str]
) -> dict[str, Any]:
    """``GET /admin/api/connections?offset=&limit=&node=``: the authenticated
    connections, this relay's first (in connection order), then the other
    relays' as far as known, a page at a time. ``node``: only that node's
    (``local`` for this relay's). ``next`` is the offset of the next page,
    None after the last."""
    offset, limit = _page(query)
    only = query.get("node")
    here = remote.node_id if remote is not None else core.server_peer_id
    # Rows are built for the page only: a page of a relay with 100,000
    # connections costs its rows, not 100,000 of them.
    local: Iterable[Connection] = core.peers() if only in (None, "local", here) else ()
    others: Iterable[RemotePeerView] = ()
    if remote is not None and only != "local":
        others = [p for p in remote.remote_peers() if only is None or only == p.node]
    total = len(local) if isinstance(local, Sized) else 0
    total += len(others) if isinstance(others, Sized) else 0
    page: list[dict[str, Any]] = []
    for conn in itertools.islice(local, offset, offset + limit):
        row = _user(conn)
        row.update(node=here, documents=sorted(conn.docs), address=conn.address)
        page.append(row)
    skip = max(0, offset - (len(local) if isinstance(local, Sized) else 0))
    for peer in itertools.islice(others, skip, skip + limit - len(page)):
        row = _remote_user(peer)
        row.update(node=peer.node, documents=sorted(peer.docs), address=None)
        page.append(row)
    after = offset + len(page)
    return {
        "connections": page,
        "total": total,
        "offset": offset,
        "next": after if after < total else None,
    }


def _reason_and_retry(body: Mapping[str, Any]) -> tuple[str, float | None]:
    reason = body.get("reason", "disconnected by the operator")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise AdminError(
            400, "invalid_request", f"reason must be a string of at most {MAX_REASON} characters"
        )
    reconnect = body.get("reconnect", False)
    if not isinstance(reconnect, bool):
        raise AdminError(400, "invalid_request", "reconnect must be true or false")
    retry_after = body.get("retryAfter", 1.0 if reconnect else None)
    if reconnect:
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or not math.isfinite(retry_after)
            or not 0 <= retry_after <= 3600
        ):
            raise AdminError(400, "invalid_request", "retryAfter must be seconds from 0 to 3600")
        return reason, float(retry_after)
    return reason, None


def disconnect_command(body: object) -> dict[str, Any]:
    """The checked form of a ``POST /admin/api/disconnect`` body:
    ``{"peerId" | "userId": ..., "reason": ..., "retryAfter": seconds | None}``
    (what :func:`disconnect` applies, and what a relay of a cluster sends
    the others)."""
    if not isinstance(body, dict):
        raise AdminError(400, "invalid_request", "the body must be a JSON object")
    reason, retry_after = _reason_and_retry(body)
    peer_id, user_id = body.get("peerId"), body.get("userId")
    if (peer_id is None) == (user_id is None):
        raise AdminError(400, "invalid_request", "give exactly one of peerId and userId")
    for value, key in ((peer_id, "peerId"), (user_id, "userId")):
        if value is not None and not isinstance(value, str):
            raise AdminError(400, "invalid_request", f"{key} must be a string")
    target = {"peerId": peer_id} if peer_id is not None else {"userId": user_id}
    return {**target, "reason": reason, "retryAfter": retry_after}


def apply_disconnect(core: RelayCore, command: Mapping[str, Any]) -> list[str]:
    """Disconnect this relay's peers a :func:`disconnect_command` names;
    returns their peer ids."""
    reason, retry_after = command["reason"], command["retryAfter"]
    peer_id = command.get("peerId")
    if peer_id is not None:
        return [peer_id] if core.disconnect(peer_id, reason, retry_after) else []
    return list(core.disconnect_user(command["userId"], reason, retry_after))


def remote_targets(remote: RemoteView | None, command: Mapping[str, Any]) -> list[str]:
    """The peers on other relays a :func:`disconnect_command` names, as far as
    this relay knows them."""
    if remote is None:
        return []
    peer_id, user_id = command.get("peerId"), command.get("userId")
    return [
        p.peer_id
        for p in remote.remote_peers()
        if p.peer_id == peer_id
        or (user_id is not None and p.user.id == user_id and not p.user.is_anonymous)
    ]


def disconnect(core: RelayCore, body: object, remote: RemoteView | None = None) -> dict[str, Any]:
    """``POST /admin/api/disconnect`` with ``{"peerId": ...}`` or
    ``{"userId": ...}``, an optional ``reason`` (the client's error message)
    and ``reconnect`` (default false: the client is told not to reconnect;
    true: after ``retryAfter`` seconds, default 1). Answers the peer ids
    disconnected on this relay (``disconnected``) and, in a cluster, those
    on other relays the command is passed on for (``forwarded``; the caller
    sends it); 404 ``not_found`` when there is none anywhere."""
    command = disconnect_command(body)
    here = apply_disconnect(core, command)
    there = remote_targets(remote, command)
    if not here and not there:
        peer_id = command.get("peerId")
        who = f"connection {peer_id!r}" if peer_id else f"connection of user {command['userId']!r}"
        raise AdminError(404, "not_found", f"no {who} on this relay or its cluster")
    answer: dict[str, Any] = {"disconnected": here}
    if remote is not None:
        answer["forwarded"] = there
    return answer


def publish_data(core: RelayCore, body: object) -> bytes:
    """The encoded payload of a ``POST .../publish`` body (checked)."""
    if not isinstance(body, dict) or "payload" not in body:
        raise AdminError(400, "invalid_request", 'the body must be {"payload": <any JSON>}')
    try:
        data = encode_payload(body["payload"])
    except PayloadError as exc:
        raise AdminError(400, "invalid_request", f"payload: {exc}") from None
    if len(data) > core.config.max_frame_size:
        raise AdminError(
            413,
            "payload_too_large",
            f"payload of {len(data)} bytes exceeds max_frame_size ({core.config.max_frame_size})",
        )
    return data


def publish(core: RelayCore, document_id: str, body: object) -> dict[str, Any]:
    """``POST /admin/api/documents/{id}/publish`` with ``{"payload": ...}``:
    the payload (any JSON value) goes to every local peer present as an
    ephemeral message from the server. Answers how many peers of this relay
    got it (``delivered``; in a cluster each relay publishes to its own)."""
    data = publish_data(core, body)
    return {"documentId": document_id, "delivered": core.publish(document_id, data)}
