"""The client's side of the operator's actions, in the sans-I/O core: a
connection the operator closes (``disconnected_by_admin``) and a message the
server publishes (see coreharness.py)."""

from __future__ import annotations

from ratatoskr_client import ConnectionClosed, DisconnectedByAdmin
from ratatoskr_client.status import ConnectionState

from .coreharness import Harness


def test_told_not_to_come_back_the_client_stops_for_good() -> None:
    h = Harness()  # reconnect is on: the operator's word wins
    h.connect()
    h.enter("doc")
    waiter = h.core.wait_presence("doc")
    effects = h.server({"type": "error", "error": "disconnected_by_admin", "message": "abuse"})
    assert h.events(effects, "error") == []  # not an error event: the reason of what follows
    h.core.connection_lost(ConnectionClosed("closed by the server", code=1008), h.now)
    effects = h.take()
    (disconnected,) = h.events(effects, "disconnected")
    reason = disconnected[1]
    assert isinstance(reason, DisconnectedByAdmin) and isinstance(reason, ConnectionClosed)
    assert (reason.reason, reason.reconnect, reason.retry_after, reason.code) == (
        "abuse",
        False,
        None,
        1008,
    )
    assert h.core.state is ConnectionState.CLOSED
    assert h.core.next_attempt(h.now) is None  # no reconnect, no loop
    assert h.finished(effects)[waiter][-1] is reason  # what waited fails with it
    assert h.events(effects, "disconnected") == [disconnected]  # announced once


def test_allowed_back_it_reconnects_no_sooner_than_retry_after() -> None:
    h = Harness()
    h.connect()
    h.server({"type": "error", "error": "disconnected_by_admin", "message": "", "retryAfter": 7.5})
    h.core.connection_lost(ConnectionClosed("closed", code=1008), h.now)
    (disconnected,) = h.events(h.take(), "disconnected")
    assert disconnected[1].reconnect and disconnected[1].retry_after == 7.5
    assert h.core.state is ConnectionState.RECONNECTING
    assert h.core.next_attempt(h.now) == 7.5  # the backoff's 0.5 s, floored
    h.connect()
    assert h.core.state is ConnectionState.CONNECTED
    # A later, ordinary loss is ordinary again.
    h.core.connection_lost(ConnectionClosed("gone"), h.now)
    (again,) = h.events(h.take(), "disconnected")
    assert type(again[1]) is ConnectionClosed


def test_the_servers_messages_come_from_the_server() -> None:
    h = Harness()
    h.connect()
    h.enter("doc")
    (message,) = h.events(h.ephemeral("server", "server-s", 1, "doc", {"notice": 1}))
    _, doc, sender, payload = message
    assert (doc, payload) == ("doc", {"notice": 1})
    assert sender.is_server and sender.peer_id == "server" and sender.name == "server"
    (other,) = h.events(h.ephemeral("peer-x", "s-x", 1, "doc", {"hi": 1}))
    assert not other[2].is_server
