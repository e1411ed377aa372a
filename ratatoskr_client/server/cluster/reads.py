"""Reading the cluster's state from Redis: the node table and nodes' hashes.

The few commands a relay runs to learn what the others hold, each in one
round trip (a pipeline), turned into the view's types. Malformed entries are
skipped and counted, never fatal: another relay's bug must not stop this one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis.asyncio as aioredis

from ...errors import ProtocolError
from .view import NodeSnapshot
from .wire import Names, decode_members, decode_peer, text

__all__ = ["read_nodes", "read_presence", "read_table"]

log = logging.getLogger("ratatoskr_client.server")


async def read_table(client: aioredis.Redis, names: Names) -> tuple[int, dict[str, int]]:
    """(the Redis server's time in ms, node -> deadline for the nodes whose
    deadline has not passed), read atomically."""
    pipe = client.pipeline(transaction=True)
    pipe.time()
    pipe.zrangebyscore(names.nodes_key, "-inf", "+inf", withscores=True)
    (seconds, micros), table = await pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return now_ms, {text(n): int(score) for n, score in table if score >= now_ms}


async def read_nodes(
    client: aioredis.Redis, names: Names, nodes: Sequence[str], docs: Sequence[str]
) -> tuple[dict[str, NodeSnapshot], int]:
    """Each node's peers and its presence in ``docs``, and how many malformed
    entries were skipped. The presence is read first: a peer listed there was
    written to the peers hash before it."""
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        if docs:
            pipe.hmget(names.docs_key(node), list(docs))
        pipe.hgetall(names.peers_key(node))
    replies = iter(await pipe.execute())
    out: dict[str, NodeSnapshot] = {}
    malformed = 0
    for node in nodes:
        present = next(replies) if docs else []
        raw_peers: dict[bytes, bytes] = next(replies)
        peers = {}
        identities = {}
        for peer_id, value in raw_peers.items():
            try:
                user, identity = decode_peer(value)
            except ProtocolError as exc:
                malformed += 1
                log.warning("ignoring a malformed peer of node %s: %s", node, exc)
                continue
            peers[text(peer_id)] = user
            if identity is not None:
                identities[text(peer_id)] = identity
        members = {}
        for doc_id, value in zip(docs, present, strict=True):
            if value is not None:
                try:
                    members[doc_id] = decode_members(value)
                except ProtocolError as exc:
                    malformed += 1
                    log.warning("ignoring malformed presence of node %s: %s", node, exc)
        out[node] = NodeSnapshot(peers, members, identities)
    return out, malformed


async def read_presence(
    client: aioredis.Redis, names: Names, nodes: Sequence[str], docs: Sequence[str]
) -> tuple[dict[str, dict[str, tuple[str, ...]]], int]:
    """document -> node -> its peers present there, for ``docs``; and how many
    malformed entries were skipped."""
    out: dict[str, dict[str, tuple[str, ...]]] = {doc_id: {} for doc_id in docs}
    if not nodes or not docs:
        return out, 0
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.hmget(names.docs_key(node), list(docs))
    malformed = 0
    for node, values in zip(nodes, await pipe.execute(), strict=True):
        for doc_id, value in zip(docs, values, strict=True):
            if value is not None:
                try:
                    out[doc_id][node] = decode_members(value)
                except ProtocolError:
                    malformed += 1
    return out, malformed
