"""The webhook sender: membership events to signed POSTs, off the relaying path.

The relay core's roster (:mod:`ratatoskr_client.server.core.roster`) reports
each membership event as it applies it; :class:`WebhookSender` only records
it (a list append) and wakes its task, which does everything else: on a relay
of a cluster, confirm the event cluster-wide (below), then queue it in the
bounded :class:`~ratatoskr_client.server.core.webhooks.EventQueue`, batch,
sign, POST, retry. Relaying never waits for any of it, and a receiver that is
down costs a connection attempt per retry, no more.

**Once per cluster.** A relay's roster sees its own peers only: "the first
peer of this document *here*". Whether that is the first peer *anywhere* is
decided in Redis, atomically, by the relay that made the change: each event
toggles this node's field in a hash per document (and per document and
user), and a Lua script answers how many nodes held one before and after. A
document is occupied when the count goes from 0 to 1, vacated when it goes
from 1 to 0; the same for a user. Two relays joining at once are ordered by
Redis: one sees 0 → 1 and sends ``occupied``, the other 1 → 2 and sends
nothing. When a relay dies, the first other relay to notice removes its
fields (one script, so only one of them gets the resulting ``vacated`` and
``user.left`` events) and sends them; a relay that starts sweeps the share
of every relay that died while no other was there to notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from ..config import RelayConfig, redact_url
from ..core.relay import RelayCore
from ..core.roster import MembershipEvent
from ..core.webhooks import (
    DELIVERY_HEADER,
    MAX_ATTEMPTS,
    MAX_BATCH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventQueue,
    WebhookStats,
    retry_delay,
    sign,
)

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["WebhookSender"]

log = logging.getLogger("ratatoskr_client.server.webhooks")

#: Seconds a POST may take (connect included) before it counts as failed.
POST_TIMEOUT: Final = 5.0
#: Seconds events wait for more to join their batch.
LINGER: Final = 0.05

# KEYS[1]: the hash of one document's (or one document and user's) holders;
# KEYS[2]: the set of keys this node holds a field in (for its cleanup).
# ARGV: node id, "1" to add this node's field, "0" to remove it.
# Returns {holders before, holders after}.
_TOGGLE: Final = """
local before = redis.call('HLEN', KEYS[1])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[2], KEYS[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], KEYS[1])
end
return {before, redis.call('HLEN', KEYS[1])}
"""

# KEYS[1]: the set of keys a dead node holds fields in. ARGV[1]: its id.
# Removes its fields; returns {key, stored event, ...} for each key it was
# the last holder of (whoever runs it first gets them; later runs get none).
_SWEEP: Final = """
local emptied = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local stored = redis.call('HGET', key, ARGV[1])
  if stored and redis.call('HDEL', key, ARGV[1]) == 1 and redis.call('HLEN', key) == 0 then
    table.insert(emptied, key)
    table.insert(emptied, stored)
  end
end
redis.call('DEL', KEYS[1])
return emptied
"""

_VACATING: Final = {"document.occupied": "document.vacated", "user.joined": "user.left"}


class WebhookSender:
    """Sends one relay's membership events to ``config.webhook_url``."""

    def __init__(
        self, core: RelayCore, config: RelayConfig, cluster: Cluster | None = None
    ) -> None:
        assert config.webhook_url is not None
        assert config.webhook_secret is not None
        self._url = config.webhook_url
        self._secret = config.webhook_secret
        self._core = core
        self._cluster = cluster
        self._redis_url = config.redis_url
        self.stats = WebhookStats()
        self.queue = EventQueue(self.stats)
        #: events the roster reported, not yet confirmed (cluster) or queued
        self._fresh: list[tuple[MembershipEvent, float]] = []
        #: nodes found dead whose fields are to be swept
        self._dead: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: stop() was called: send what is queued, retry nothing
        self._stopping = False
        self._offset = time.time() - core.clock()
        self.node = cluster.node_id if cluster is not None else core.server_peer_id
        core.roster.on_event = self._record
        if cluster is not None:
            cluster.view.on_node_dropped = self._node_dropped

    # ------------------------------------------------------------------ from the core

    def _record(self, event: MembershipEvent) -> None:
        # Called inside the core's call: record, nothing more. The list is
        # bounded by the queue's limit too (beyond it, counted as dropped).
        if len(self._fresh) >= self.queue.limit:
            self.stats.dropped["queue_full"] += 1
            return
        self._fresh.append((event, event.at + self._offset))
        self._wake.set()

    def _node_dropped(self, node: str) -> None:
        self._dead.append(node)
        self._wake.set()

    # ------------------------------------------------------------------ the task

    def start(self) -> None:
        """Start sending (in the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="ratatoskr-webhooks")

    async def stop(self, grace: float = 2.0) -> None:
        """Send what is queued for up to ``grace`` seconds, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self._core.roster.on_event = None

    async def _run(self) -> None:
        redis = None
        if self._cluster is not None and self._redis_url is not None:
            aioredis = importlib.import_module("redis.asyncio")
            redis = aioredis.from_url(self._redis_url, socket_timeout=POST_TIMEOUT)
        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
        finder = None
        if redis is not None:
            finder = asyncio.create_task(self._find_dead_once_synced(redis))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    if not self._fresh and not self._dead and not len(self.queue):
                        if self._stopping:
                            return
                        self._wake.clear()
                        await self._wake.wait()
                    await asyncio.sleep(LINGER)  # (a burst becomes one batch)
                    await self._confirm(redis)
                    while len(self.queue):
                        await self._deliver(session, self.queue.take(MAX_BATCH))
                        await self._confirm(redis)
        finally:
            if finder is not None:
                finder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await finder
            if redis is not None:
                with contextlib.suppress(Exception):
                    await redis.aclose()

    async def _confirm(self, redis: Any) -> None:
        """Move the recorded events to the queue; in a cluster, only those
        that change the cluster's count from or to zero."""
        fresh, self._fresh = self._fresh, []
        dead, self._dead = self._dead, []
        if redis is None:
            for event, at in fresh:
                self.queue.put(_body(event, at))
            return
        assert self._cluster is not None
        names = self._cluster.view.names
        mine = f"{names.prefix}:webhook:node:{self.node}"
        for event, at in fresh:
            key, adding = _key(names.prefix, event)
            stored = json.dumps(_body(event, at)) if adding else ""
            while True:
                try:
                    before, after = await redis.eval(
                        _TOGGLE, 2, key, mine, self.node, "1" if adding else "0", stored
                    )
                    break
                except Exception as exc:  # Redis down: wait for it, keep the order
                    log.warning("webhooks: Redis unreachable (%s); retrying", exc)
                    await asyncio.sleep(1.0)
            if (adding and int(before) == 0 and int(after) == 1) or (
                not adding and int(before) == 1 and int(after) == 0
            ):
                self.queue.put(_body(event, at))
        for node in dead:
            try:
                emptied = await redis.eval(_SWEEP, 1, f"{names.prefix}:webhook:node:{node}", node)
            except Exception as exc:
                log.warning("webhooks: cannot sweep node %s (%s)", node, exc)
                continue
            pairs = iter(emptied)
            for _, stored in zip(pairs, pairs, strict=True):
                body = json.loads(stored)
                body["type"] = _VACATING.get(body["type"], body["type"])
                body["at"] = round(time.time(), 3)
                body["reason"] = "node_gone"
                self.queue.put(body)

    async def _find_dead_once_synced(self, redis: Any) -> None:
        """:meth:`_find_dead`, once the cluster link has read the node table.

        From that read on, the link's registry watches every node that was
        alive then, and reports it here (``on_node_dropped``) when it stops
        heartbeating. So the nodes to find are those already dead at that
        read, and they stay dead. Looked for earlier (at start, or while
        Redis did not answer), a node whose deadline passed in between was
        seen by neither, and its share was never swept."""
        assert self._cluster is not None
        while not await self._cluster.wait_up():
            pass  # Redis does not answer yet; the link keeps trying
        await self._find_dead(redis)

    async def _find_dead(self, redis: Any) -> None:
        """Relays that died while no other relay was there to see it (a whole
        cluster restarted) left their share behind: sweep every node that
        holds webhook keys and is not alive (its deadline in the node table
        has passed, or it is gone from it). A node alive but slow is not
        swept: its deadline has not passed."""
        assert self._cluster is not None
        names = self._cluster.view.names
        try:
            seconds, micros = await redis.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            live = {
                n.decode() if isinstance(n, bytes) else n
                for n in await redis.zrangebyscore(names.nodes_key, now_ms, "+inf")
            }
            prefix = f"{names.prefix}:webhook:node:"
            async for key in redis.scan_iter(match=prefix + "*", count=1000):
                node = (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]
                if node != self.node and node not in live:
                    self._dead.append(node)
        except Exception as exc:
            log.warning("webhooks: cannot look for relays that died unseen: %s", exc)
        if self._dead:
            self._wake.set()

    async def _deliver(self, session: aiohttp.ClientSession, events: list[dict[str, Any]]) -> None:
        delivery = secrets.token_hex(12)
        body = json.dumps(
            {"deliveryId": delivery, "node": self.node, "events": events}, separators=(",", ":")
        ).encode()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: sign(self._secret, stamp, body),
                DELIVERY_HEADER: delivery,
                "User-Agent": "ratatoskr-relay-webhooks",
            }
            try:
                async with session.post(self._url, data=body, headers=headers) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                ok = False
                problem = str(exc) or type(exc).__name__
            if ok:
                self.stats.deliveries["ok"] += 1
                self.stats.delivered += len(events)
                return
            self.stats.deliveries["error"] += 1
            if self._stopping or attempt == MAX_ATTEMPTS:
                break
            delay = retry_delay(attempt)
            log.info(
                "webhook to %s failed (%s); retry %d in %g s",
                redact_url(self._url),
                problem,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)
        self.stats.dropped["failed"] += len(events)
        log.warning(
            "webhook to %s failed %d times: %d events dropped",
            redact_url(self._url),
            MAX_ATTEMPTS,
            len(events),
        )


def _body(event: MembershipEvent, at: float) -> dict[str, Any]:
    body = event.to_json()
    body["at"] = round(at, 3)
    return body


def _key(prefix: str, event: MembershipEvent) -> tuple[str, bool]:
    """(the holders' hash of ``event``, whether it adds a holder)."""
    adding = event.kind in ("document.occupied", "user.joined")
    if event.user is None:
        return f"{prefix}:webhook:doc:{event.document_id}", adding
    return f"{prefix}:webhook:user:{event.document_id}\x00{event.user}", adding
