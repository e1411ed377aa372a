"""The parts of ClientCore, each owning its state: the connection's transition
table, the presence watches, the options; and the core's own rules around them
(closed while connecting, a socket closed by close()). No socket, no event loop.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any, get_args, get_type_hints

import cbor2
import pytest

from ratatoskr_client import Backoff, ClientOptions, ConnectionClosed
from ratatoskr_client.asyncio.driver import Driver
from ratatoskr_client.core import client as core_module
from ratatoskr_client.core.connection import (
    TRANSITIONS,
    Connection,
    ConnectionEvent,
    InvalidTransition,
)
from ratatoskr_client.core.settings import OPTION_NAMES, Settings
from ratatoskr_client.core.waiters import WATCH_BACKLOG
from ratatoskr_client.status import ClientStats, ConnectionState, DocumentState

from .coreharness import Harness

CORE = Path(core_module.__file__).parent
STATES = list(ConnectionState)
EVENTS: list[ConnectionEvent] = list(get_args(ConnectionEvent))

# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
def test_a_state_changes_by_its_table_and_an_impossible_change_is_refused(
    state: ConnectionState, event: ConnectionEvent
):
    connection = Connection(reconnect=True)
    connection.state = state  # (set up by hand: the table is what is tested)
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition, match=f"{event}.*{state.value}"):
            connection.apply(event)
        assert connection.state is state  # refused: nothing changed
    else:
        assert connection.apply(event) is expected
        assert connection.state is expected


def test_the_table_covers_a_whole_life_and_every_state():
    assert {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values()) == set(STATES)
    life: list[ConnectionEvent] = ["connect", "authenticated", "lost", "authenticated", "close"]
    connection = Connection(reconnect=True)
    assert [connection.apply(e).value for e in life] == [
        "connecting", "connected", "reconnecting", "connected", "closed"
    ]  # fmt: skip


def test_only_the_connection_and_the_document_records_assign_a_state():
    # Every other module asks them (Connection.apply, Documents' methods).
    assigning = set()
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "state":
                        assigning.add(path.name)
    assert assigning == {"connection.py", "documents.py", "peer_state.py"}  # (a peer's state)


def test_an_impossible_input_raises_instead_of_passing_silently():
    h = Harness()
    with pytest.raises(InvalidTransition):
        h.core.connection_lost(ConnectionClosed("never connected"), h.now)
    assert h.core.state is ConnectionState.IDLE


# --------------------------------------------------------------------------- races that are rules


def auth_ok() -> bytes:
    return cbor2.dumps(
        {"type": "auth_ok", "peerId": "server", "clientPeerId": "me-1", "features": ["presence"]}
    )


def test_an_auth_ok_after_close_is_refused_and_connect_says_why():
    h = Harness()
    assert h.core.connect_started()
    h.core.auth_frame(h.now)
    h.core.close(h.now)  # close() while connecting: the driver tells the core first
    with pytest.raises(ConnectionClosed, match="closed while connecting"):
        h.core.handshake(auth_ok(), h.now)
    assert h.core.state is ConnectionState.CLOSED
    instead = h.core.connect_failed()
    assert isinstance(instead, ConnectionClosed) and "closed while connecting" in str(instead)
    assert h.events(h.take(), "connected") == []


def test_connect_while_connecting_is_a_usage_error_and_while_connected_nothing():
    h = Harness()
    assert h.core.connect_started()
    with pytest.raises(RuntimeError, match="in progress"):
        h.core.connect_started()
    assert h.core.connect_failed() is None  # the failure stands; connect() may be retried
    assert h.core.state is ConnectionState.IDLE
    h.connect()
    assert h.core.connect_started() is False


def test_a_socket_closed_by_close_is_not_a_lost_connection():
    h = Harness()
    h.connect()
    h.core.close(h.now)
    h.take()
    h.core.connection_lost(ConnectionClosed("closed"), h.now)
    assert h.take() == []
    assert h.core.next_attempt(h.now) is None


def test_the_visible_state_and_sending_follow_the_socket():
    h = Harness(reconnect=False)
    h.connect()
    assert h.core.connection_state(socket_closed=False) is ConnectionState.CONNECTED
    assert h.core.connection_state(socket_closed=True) is ConnectionState.CLOSED
    with pytest.raises(ConnectionClosed, match="just lost"):
        h.core.send_ephemeral("doc", 1, h.now, socket_closed=True)
    assert h.core.wait_connected(socket_closed=False) is None
    assert isinstance(h.core.wait_connected(socket_closed=True), int)
    reconnecting = Harness()
    reconnecting.connect()
    assert reconnecting.core.connection_state(socket_closed=True) is ConnectionState.RECONNECTING


# --------------------------------------------------------------------------- watches


def test_a_watch_that_is_not_read_keeps_the_latest_values_only():
    h = Harness()
    h.connect()
    h.enter("doc")
    watcher = h.core.watch("doc")
    pushes = 0
    for n in range(WATCH_BACKLOG // 2 + 5):  # two settled presences each, never taken
        for kind in ("peer_joined_doc", "peer_left_doc"):
            frame = {"type": kind, "documentId": "doc", "peerId": f"p{n}"}
            h.core.receive(cbor2.dumps(frame), h.now)
            h.core.settle(h.now)
            pushes += sum(type(e).__name__ == "Push" for e in h.outbox.take())
    assert pushes == 1  # its consumer was told once: it takes until there is nothing
    values = []
    while isinstance(item := h.core.next_presence(watcher), tuple):
        values.append([p.peer_id for p in item])
    assert item is None  # nothing more, and not over
    assert len(values) == WATCH_BACKLOG
    assert values[:2] == [["me-1", "p5"], ["me-1"]]  # the oldest ten are lost
    assert values[-2:] == [["me-1", f"p{WATCH_BACKLOG // 2 + 4}"], ["me-1"]]


def test_a_watch_of_a_closed_client_ends_at_once():
    h = Harness()
    h.connect()
    h.core.close(h.now)
    watcher = h.core.watch("doc")
    assert isinstance(h.core.next_presence(watcher), ConnectionClosed)
    assert h.core.stats(socket_closed=True, tasks=(), callbacks=0, timers=0).watchers == 0


# --------------------------------------------------------------------------- options


def settings_defaults() -> dict[str, Any]:
    return {
        name: field.default
        for name, field in Settings.__dataclass_fields__.items()
        if name in OPTION_NAMES
    }


def option_docs() -> dict[str, str]:
    """Each option's docstring, read from the source (Python keeps none for keys)."""
    source = Path(inspect.getsourcefile(Settings) or "").read_text()
    (cls,) = [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.ClassDef) and n.name == "ClientOptions"
    ]
    docs = {}
    for node, after in zip(cls.body, cls.body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            assert isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            docs[node.target.id] = after.value.value
    return docs


def test_the_options_are_the_settings_with_the_same_types():
    hints = get_type_hints(ClientOptions)
    fields = get_type_hints(Settings)
    assert (
        set(hints)
        == OPTION_NAMES
        == set(fields) - {"url", "urls", "max_presence_peers", "max_identities"}
    )
    assert {name: fields[name] for name in hints} == hints
    assert ClientOptions.__required_keys__ == frozenset()  # every option may be left out


def test_every_option_documents_its_default_as_the_settings_hold_it():
    docs = option_docs()
    assert set(docs) == OPTION_NAMES
    defaults = settings_defaults()
    namespace = {"Backoff": Backoff}
    for name, doc in docs.items():
        found = re.findall(r"Default: ``([^`]+)``", doc)
        assert len(found) == 1, f"{name}: say 'Default: ``value``' once"
        assert eval(found[0], namespace) == defaults[name], name  # a value, not a name
        assert len(doc.split()) > 5, f"{name}: say what it means"


def test_an_unknown_option_is_a_type_error_and_a_bad_value_a_value_error():
    with pytest.raises(TypeError, match="'heartbeat'"):
        Settings.from_options("http://relay.test", {"heartbeat": 3})
    with pytest.raises(TypeError, match="'max_identities'"):  # a bound, not an option
        Settings.from_options("http://relay.test", {"max_identities": 3})
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Settings.from_options("http://relay.test", {"heartbeat_interval": -1})
    assert Settings.from_options("http://relay.test", {}) == Settings("http://relay.test")


# --------------------------------------------------------------------------- what stats say


def test_stats_show_every_document_state_and_only_those():
    h = Harness()
    h.connect()
    h.enter("doc")
    documents = h.core.stats(socket_closed=False, tasks=(), callbacks=0, timers=0).documents
    assert set(documents) == {state.value for state in DocumentState}
    assert documents["present"] == ("doc",)


def test_a_refused_membership_is_dropped_not_kept_in_a_state():
    h = Harness()
    h.connect()
    h.core.enter("secret", h.now)
    h.take()
    refusal = {
        "type": "error",
        "error": "permission_denied",
        "message": "no",
        "documentId": "secret",
    }
    h.server(refusal)
    assert h.core.docs.by_state() == {"entering": (), "present": (), "leaving": (), "refused": ()}


def test_the_tasks_documented_are_the_tasks_the_driver_reports():
    tasks_doc = (ClientStats.__doc__ or "").split("tasks:", 1)[1].split("callbacks:", 1)[0]
    documented = set(re.findall(r'``"([a-z]+)"``', tasks_doc))
    tree = ast.parse(inspect.getsource(Driver.tasks).strip())
    reported = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "append"
        and isinstance(node.args[0], ast.Constant)
    }
    assert documented == reported == {"receive", "write"}
