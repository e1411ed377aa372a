"""One relay's link to the others through Redis (``redis.asyncio``).

:class:`RedisLink` moves bytes between Redis and the :class:`~.view.ClusterView`;
every rule about what they mean lives in the pure modules: the view, the
wire (:func:`~.wire.belongs_on`), the registry (node deadlines, the link's
and the subscription's liveness). One link session:

1. connect, check the server (Redis >= 7 or Valkey: sharded pub/sub);
2. subscribe to the cluster channel;
3. write this node's state in one transaction (its peers and presence hashes,
   its deadline in the node table) and publish ``hello``; from then on the
   view queues every local change, which the *writer* sends in order;
4. subscribe to the channels of the documents with local peers, then send a
   ``PING`` marker down the subscription connection. Redis answers it in
   order with the messages, so when the *reader* meets the marker every
   subscription before it is active: it reads the whole state (every live
   node's peers, and their presence in those documents) and hands it to the
   view, which announces the differences;
5. run the reader, the writer, the *heartbeat* (every TTL/5: refresh the
   deadline, read the node table, drop nodes whose deadline passed, ping the
   subscription connection to prove it alive) and the *subscriber* (changes
   to the document subscriptions, each followed by a marker after which the
   new documents' presence is read).

The reader reads state inline: while it waits for Redis, the messages that
follow queue up in the socket, so they are applied after the state they
follow — no buffering code. Any failure ends the session: the view is told
(local peers keep being served, documents are read again later), and the link
reconnects with capped, jittered backoff. A node cut off for ``node_ttl``
stops showing the other nodes' peers, as they stop showing its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...backoff import Backoff
from ...errors import ProtocolError
from ..config import redact_url
from .reads import read_nodes, read_presence, read_table
from .registry import LinkWatch, NodeRegistry, PingWatch, RoundTrips, Timing, own_deadline_passed
from .view import ClusterView
from .wire import Bye, Hello, belongs_on, decode_message, encode_message, header, text

__all__ = ["MIN_REDIS_VERSION", "RedisLink"]

log = logging.getLogger("ratatoskr_client.server")

#: Sharded pub/sub (SSUBSCRIBE) appeared in Redis 7.0.
MIN_REDIS_VERSION: Final = (7, 0)

# One heartbeat, atomically and on the server's clock: write our deadline,
# keep our hashes alive, forget long-dead entries, read everyone's deadline.
# KEYS: node table, our peers hash, our docs hash.
# ARGV: node id, window ms, key ttl ms, forget-after ms.
_HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
return {now, prev or '-1', live}
"""


class _Rejoin(Exception):
    """Our own deadline passed (a long pause): the others dropped us; start over."""


class _Stalled(Exception):
    """The subscription connection stopped answering."""


class RedisLink:
    """Keeps one relay connected to its cluster; see the module docstring."""

    def __init__(
        self,
        view: ClusterView,
        url: str,
        timing: Timing,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.url = url
        self.timing = timing
        self.names = view.names
        self.node_id = view.node_id
        self.clock = clock
        self.registry = NodeRegistry(self.node_id, timing.window_ms)
        self.watch = LinkWatch(timing.node_ttl)
        #: heartbeat round trips (a server-side script: one command's latency)
        self.round_trips = RoundTrips()
        #: the link is up and synchronised
        self.up = False
        #: times the link came back after being lost
        self.reconnects = 0
        #: messages published and received (own echoes excluded)
        self.published = 0
        self.received = 0
        #: malformed messages ignored
        self.malformed = 0
        self._ever_up = False
        self._warned = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._header = header(self.node_id)  # how our own messages come back
        #: this node's presence hashes in Redis
        self._peers_key = self.names.peers_key(self.node_id)
        self._docs_key = self.names.docs_key(self.node_id)
        self._wake = asyncio.Event()
        self._docs_changed = asyncio.Event()
        self._up_event = asyncio.Event()
        #: document channel -> the marker sent after its SSUBSCRIBE
        self._subscribed: dict[str, int] = {}
        self._markers = itertools.count(1)
        self._full_marker = 0
        #: heartbeat pings down the subscription connection, not answered yet
        self._pings = PingWatch(timing.beat)
        self._backoff = Backoff(base_delay=0.05, multiplier=2.0, max_delay=timing.max_backoff)
        view.on_outgoing = self._wake.set
        view.on_documents = self._docs_changed.set

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start :meth:`run` as a task of the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"ratatoskr-cluster-{self.node_id}")

    async def run(self) -> None:
        """Connect, serve, and reconnect forever (until cancelled)."""
        attempt = 0
        while not self._stopping:
            self._check_watch()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except _Rejoin:
                log.warning("node %s missed its own deadline; announcing it again", self.node_id)
            except Exception as exc:  # any failure of the link: serve locally, retry
                self._lost(exc)
            was_up, self.up = self.up, False
            self._up_event.clear()
            self.view.link_down()
            self.watch.down(self.clock())
            if was_up:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            await self._sleep(delay)

    async def wait_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the link to be up; True if it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), timeout)
        return self.up

    async def stop(self) -> None:
        """Send what is queued, say goodbye (the others drop this node's peers
        at once rather than after ``node_ttl``) and close. Idempotent."""
        self._stopping = True
        task, self._task = self._task, None
        # Cancel until it is done: on Python 3.11, asyncio.wait_for (which
        # redis-py uses for its timeouts) can swallow a cancellation that
        # arrives as the operation it guards completes.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()

    def _lost(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "Redis link to %s lost (%s); serving local peers only until it is back",
                redact_url(self.url),
                _describe(exc),
            )
        else:
            log.debug("Redis link attempt failed: %s", _describe(exc))
        if not isinstance(exc, OSError | aioredis.RedisError | ProtocolError | _Stalled):
            log.error("unexpected failure of the Redis link", exc_info=exc)

    def _check_watch(self) -> None:
        if self.watch.due(self.clock()):
            log.warning(
                "Redis link down for %g s: no longer showing the other relays' peers",
                self.timing.node_ttl,
            )
            for node in self.view.nodes():
                self.registry.forget(node)
            self.view.drop_all()

    async def _sleep(self, delay: float) -> None:
        # Wake up in time to drop the other nodes' peers when the grace ends.
        end = self.clock() + delay
        while True:
            now = self.clock()
            remaining = self.watch.remaining(now)
            step = end - now if remaining is None else min(end - now, remaining)
            if step > 0:
                await asyncio.sleep(step)
            self._check_watch()
            if self.clock() >= end:
                return

    # ------------------------------------------------------------------ one session

    async def _session(self) -> None:
        t = self.timing
        client = aioredis.from_url(
            self.url,
            socket_timeout=t.command_timeout,
            socket_connect_timeout=t.command_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name=f"ratatoskr-{self.node_id}",
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._check_server(client)
            await pubsub.subscribe(self.names.cluster_channel, self.names.resume_channel)
            self._subscribed.clear()
            self._pings.clear()
            self.view.link_up()
            peers, docs = self.view.local_state()
            await self._write_state(client, peers, docs)
            self._full_marker = await self._sync_subscriptions(pubsub)
            tasks = [
                asyncio.create_task(self._reader(client, pubsub)),
                asyncio.create_task(self._writer(client)),
                asyncio.create_task(self._heartbeat(client, pubsub)),
                asyncio.create_task(self._subscriber(pubsub)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._stopping and self.up:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._goodbye(client), t.command_timeout)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call,unused-ignore]  # (typed from redis 8)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 1.0)

    async def _check_server(self, client: aioredis.Redis) -> None:
        info = await client.info("server")
        raw = str(info.get("redis_version", "0"))
        version = tuple(int(p) for p in raw.split(".")[:2] if p.isdigit())
        if version < MIN_REDIS_VERSION:
            raise aioredis.RedisError(
                f"Redis {raw} has no sharded pub/sub; the relay cluster needs Redis 7 or later "
                "(or Valkey)"
            )

    async def _write_state(
        self, client: aioredis.Redis, peers: dict[str, bytes], docs: dict[str, bytes]
    ) -> None:
        names = self.names
        pipe = client.pipeline(transaction=True)
        pipe.delete(self._peers_key, self._docs_key)
        if peers:
            pipe.hset(self._peers_key, mapping=peers)  # type: ignore[arg-type]
        if docs:
            pipe.hset(self._docs_key, mapping=docs)  # type: ignore[arg-type]
        # Last, so a node that finds us in the table also finds our hashes.
        self._heartbeat_call(pipe)
        pipe.publish(names.cluster_channel, encode_message(self.node_id, Hello()))
        await pipe.execute()

    def _heartbeat_call(self, target: Any) -> Any:
        names, t = self.names, self.timing
        return target.eval(
            _HEARTBEAT,
            3,
            names.nodes_key,
            self._peers_key,
            self._docs_key,
            self.node_id,
            t.window_ms,
            t.key_ttl_ms,
            t.forget_after_ms,
        )

    async def _goodbye(self, client: aioredis.Redis) -> None:
        out = self.view.take_outgoing()
        names = self.names
        pipe = client.pipeline(transaction=False)
        if out is not None:
            _publish(pipe, out.messages)
        pipe.delete(self._peers_key, self._docs_key)
        pipe.zrem(names.nodes_key, self.node_id)
        pipe.publish(names.cluster_channel, encode_message(self.node_id, Bye()))
        await pipe.execute()
        self.up = False

    # ------------------------------------------------------------------ subscriptions

    async def _sync_subscriptions(self, pubsub: PubSub) -> int:
        """Make the document subscriptions match the view; returns the marker
        sent after them."""
        wanted = {self.names.doc_channel(d) for d in self.view.documents()}
        gone = [c for c in self._subscribed if c not in wanted]
        new = [c for c in wanted if c not in self._subscribed]
        marker = next(self._markers)
        for channel in gone:
            del self._subscribed[channel]
        for channel in new:
            self._subscribed[channel] = marker
        if gone:
            await pubsub.sunsubscribe(*gone)
        if new:
            await pubsub.ssubscribe(*new)
        await pubsub.ping(f"docs:{marker}")
        return marker

    async def _subscriber(self, pubsub: PubSub) -> None:
        while True:
            await self._docs_changed.wait()
            self._docs_changed.clear()
            await self._sync_subscriptions(pubsub)

    # ------------------------------------------------------------------ reading

    async def _reader(self, client: aioredis.Redis, pubsub: PubSub) -> None:
        own = self._header
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            if kind == "smessage" or kind == "message":
                data = message["data"]
                if not isinstance(data, bytes) or data.startswith(own):
                    continue
                await self._on_message(client, message["channel"], data)
            elif kind == "pong":
                await self._on_marker(client, message["data"])

    async def _on_message(self, client: aioredis.Redis, channel: bytes, data: bytes) -> None:
        try:
            node, messages = decode_message(data)
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("ignoring a malformed cluster message: %s", exc)
            return
        self.received += len(messages)
        document_id = self.names.document_of(channel)
        for body in messages:
            if not belongs_on(body, document_id):
                self.malformed += 1
            elif type(body) is Hello:
                if self.view.connected:
                    await self._read_node(client, node)
            else:
                if type(body) is Bye:
                    self.registry.forget(node)
                self.view.apply(node, body, document_id)

    async def _on_marker(self, client: aioredis.Redis, data: object) -> None:
        reply = text(data) if isinstance(data, bytes | str) else str(data)
        kind, _, number = reply.partition(":")
        if kind == "beat":
            self._pings.answered(number)
            return
        if kind != "docs" or not number.isdigit():
            return
        marker = int(number)
        if marker == self._full_marker:
            await self._read_all(client)
        elif self.view.connected:
            await self._read_docs(client, marker)

    async def _read_all(self, client: aioredis.Redis) -> None:
        docs = self._subscribed_docs(self._full_marker)
        now_ms, live = await read_table(client, self.names)
        live.pop(self.node_id, None)
        snapshots, malformed = await read_nodes(client, self.names, list(live), list(docs))
        self.malformed += malformed
        # Nobody is blamed for the time the link was down (see registry.py).
        self.registry.extend(now_ms)
        for node in snapshots:
            self.registry.introduce(node)
        self.view.reset(snapshots, docs)
        self.registry.sweep(now_ms, live)
        if not self.up:
            if self._ever_up:
                self.reconnects += 1
                log.warning("Redis link back; %d other relay(s) in the cluster", len(live))
            else:
                log.info("joined the relay cluster: %d other relay(s)", len(live))
            self._ever_up = True
        self.up = True
        self._up_event.set()
        self._warned = False
        self.watch.up()

    async def _read_node(self, client: aioredis.Redis, node: str) -> None:
        docs = list(self.view.documents())
        snapshots, malformed = await read_nodes(client, self.names, [node], docs)
        self.malformed += malformed
        self.registry.introduce(node)
        self.view.replace_node(node, snapshots[node])

    def _subscribed_docs(self, marker: int) -> dict[str, int]:
        """Documents to read whose subscription was sent before ``marker``
        (so is active once the marker came back): document -> generation."""
        channel = self.names.doc_channel
        subscribed = self._subscribed
        return {
            d: gen
            for d, gen in self.view.docs_to_fetch().items()
            if subscribed.get(channel(d), marker + 1) <= marker
        }

    async def _read_docs(self, client: aioredis.Redis, marker: int) -> None:
        docs = self._subscribed_docs(marker)
        if not docs:
            return
        nodes = list(self.view.nodes())
        presence, malformed = await read_presence(client, self.names, nodes, list(docs))
        self.malformed += malformed
        for doc_id, members in presence.items():
            self.view.doc_fetched(doc_id, docs[doc_id], members)

    # ------------------------------------------------------------------ writing

    async def _writer(self, client: aioredis.Redis) -> None:
        peers_key, docs_key = self._peers_key, self._docs_key
        while True:
            await self._wake.wait()
            self._wake.clear()
            out = self.view.take_outgoing()
            if out is None:
                continue
            pipe = client.pipeline(transaction=False)
            # The hashes before the messages: a node that subscribes and then
            # reads them must find every change whose message it missed.
            if out.peers_set:
                pipe.hset(peers_key, mapping=out.peers_set)  # type: ignore[arg-type]
            if out.peers_del:
                pipe.hdel(peers_key, *out.peers_del)
            if out.docs_set:
                pipe.hset(docs_key, mapping=out.docs_set)  # type: ignore[arg-type]
            if out.docs_del:
                pipe.hdel(docs_key, *out.docs_del)
            _publish(pipe, out.messages)
            await pipe.execute()
            self.published += out.count

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self, client: aioredis.Redis, pubsub: PubSub) -> None:
        beats = itertools.count(1)
        while True:
            started = self.clock()
            now_ms, previous, table = await self._heartbeat_call(client)
            self.round_trips.observe(self.clock() - started)
            if own_deadline_passed(int(float(previous)), int(now_ms)):
                raise _Rejoin
            pairs = iter(table)
            live = {text(n): int(float(score)) for n, score in zip(pairs, pairs, strict=True)}
            for node in self.registry.sweep(int(now_ms), live):
                log.warning("relay node %s stopped heartbeating: removing its peers", node)
                self.view.drop_node(node)
            # Prove the subscription connection alive (see PingWatch).
            if self._pings.stalled(started):
                raise _Stalled("the subscription connection stopped answering pings")
            marker = str(next(beats))
            self._pings.sent(marker, self.clock())
            await pubsub.ping(f"beat:{marker}")
            await asyncio.sleep(self.timing.beat)


def _describe(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    return message.splitlines()[0][:200]


def _publish(pipe: Any, messages: list[tuple[str, bool, bytes]]) -> None:
    """Queue ``messages`` (channel, sharded, data) on a pipeline: sharded ones
    with SPUBLISH (document channels), the others with PUBLISH."""
    for channel, sharded, data in messages:
        (pipe.spublish if sharded else pipe.publish)(channel, data)
