"""Who a connection is, for the gossip rule: its identity key. No I/O.

An ephemeral ``sessionId`` changes hands only between connections of the same
identity (:mod:`ratatoskr_client.protocol.gossip`, ``docs/protocol.md``), so
that a stock automerge-repo peer, which keeps its sessionId across reconnects,
carries on after a reconnect, while nobody else can take its session over.

* A **token user** is its user id: every connection of ``alice`` is ``alice``.
* An **anonymous** peer has no account, so the only thing that ties its
  connections together is where they come from: its identity is its source
  address (``Connection.address``). A stock anonymous peer reconnecting from
  the same address carries on; an attacker must share its address to take its
  session over. Behind a reverse proxy or load balancer every peer comes from
  the proxy's address, so there all anonymous peers are one identity (the same
  limit as the per-address auth allowance).

The address never appears in clear: the key is an HMAC-SHA256 of it, keyed by
the relay's identity key. In a cluster identities travel through Redis with
the peers' announcements, and every relay must compute the same one, so the
key is derived from the cluster's ``redis_url`` (every relay runs the same
configuration): with a password in the URL it is a secret Redis never sees;
without one it only keeps addresses out of Redis in clear (anyone who knows the
URL can hash all 2**32 IPv4 addresses). A relay without a cluster uses a random
key of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

__all__ = ["identity_key", "identity_of"]

_CONTEXT: Final = b"ratatoskr identity key v1\x00"


def identity_key(redis_url: str | None) -> bytes:
    """The key anonymous identities are hashed with: derived from ``redis_url``
    (the same on every relay of a cluster), or random for a relay on its own."""
    if redis_url is None:
        return secrets.token_bytes(32)
    return hashlib.sha256(_CONTEXT + redis_url.encode("utf-8", "surrogatepass")).digest()


def identity_of(user_id: str | None, address: str, key: bytes) -> str:
    """The identity key of a connection: ``user:<id>`` for a token user,
    ``anon:<32 hex digits>`` (the keyed hash of ``address``) for an anonymous one."""
    if user_id is not None:
        return f"user:{user_id}"
    digest = hmac.new(key, address.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return f"anon:{digest.hexdigest()[:32]}"
