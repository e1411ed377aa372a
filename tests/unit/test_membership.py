"""MembershipStore: the pure identity/presence state machine, without any I/O.

Every rule of the ``ratatoskr_client.core.membership`` module docstring is checked here
with hand-written frame sequences, and a hypothesis state machine compares the
store against a deliberately naive model on arbitrary frame sequences.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ratatoskr_client.core.membership import (
    IdentityAdded,
    IdentityRemoved,
    MembershipStore,
    Peer,
    PeerJoined,
    PeerLeft,
    PresenceChanged,
    SelfRemoved,
)
from ratatoskr_client.protocol import (
    AuthOkFrame,
    DocPresenceStateFrame,
    EphemeralFrame,
    ErrorFrame,
    PeerDisconnectedFrame,
    PeerIdentityFrame,
    PeerJoinedDocFrame,
    PeerLeftDocFrame,
    UnknownFrame,
    UserInfo,
)

ME = "peer-me"


def auth_ok(peer_id: str = ME, name: str = "Alice", user_id: str | None = "alice") -> AuthOkFrame:
    return AuthOkFrame(
        "relay-1",
        peer_id,
        UserInfo(user_id, name, user_id is None),
        ("identity", "presence", "ephemeral"),
    )


def identity(peer_id: str, name: str, user_id: str | None = None) -> PeerIdentityFrame:
    return PeerIdentityFrame(peer_id, UserInfo(user_id, name, user_id is None))


def store_with(*peers: tuple[str, str], docs: tuple[str, ...] = ("doc",)) -> MembershipStore:
    """An authenticated store that knows ``peers`` (id, name) and tracks ``docs``."""
    store = MembershipStore()
    store.authenticated(auth_ok())
    for pid, name in peers:
        store.apply(identity(pid, name))
    for doc in docs:
        store.track(doc)
    return store


def ids(peers: tuple[Peer, ...]) -> list[str]:
    return [p.peer_id for p in peers]


# --------------------------------------------------------------------------- identities


def test_authenticated_records_me_and_its_identity():
    store = MembershipStore()
    assert store.me is None
    assert dict(store.identities) == {}
    assert store.authenticated(auth_ok()) == []
    me = Peer(ME, "alice", "Alice", False)
    assert store.me == me
    assert dict(store.identities) == {ME: me}


def test_anonymous_me_has_no_user_id():
    store = MembershipStore()
    store.authenticated(auth_ok(name="Neon Narwhal", user_id=None))
    assert store.me == Peer(ME, None, "Neon Narwhal", True)
    assert store.me is not None and store.me.is_anonymous


def test_auth_ok_without_user_falls_back_to_the_peer_id():
    # The upstream server sends user: null; the store still has a usable `me`.
    store = MembershipStore()
    store.authenticated(AuthOkFrame("relay-1", ME, None, None))
    assert store.me == Peer(ME, None, ME, True)


def test_peer_identity_is_added_once_and_updated_when_it_changes():
    store = store_with()
    bob = Peer("p-bob", None, "Bold Badger", True)
    assert store.apply(identity("p-bob", "Bold Badger")) == [IdentityAdded(bob)]
    assert store.identities["p-bob"] == bob
    assert store.apply(identity("p-bob", "Bold Badger")) == []  # same identity again
    renamed = Peer("p-bob", None, "Calm Cat", True)
    assert store.apply(identity("p-bob", "Calm Cat")) == [IdentityAdded(renamed)]
    assert store.identities["p-bob"] == renamed


def test_identities_is_a_read_only_live_view():
    store = store_with()
    view = store.identities
    with pytest.raises(TypeError):
        view["x"] = Peer("x", None, "x", True)  # type: ignore[index]
    store.apply(identity("p-bob", "Bob"))
    assert "p-bob" in view


def test_frames_that_are_not_about_presence_change_nothing():
    store = store_with(("p-bob", "Bob"))
    store.apply(PeerJoinedDocFrame("doc", "p-bob"))
    before = (store.presence("doc"), dict(store.identities))
    for frame in (
        ErrorFrame("permission_denied", "no", "doc"),
        EphemeralFrame("p-bob", ME, "doc", 1, "s", b"\xa0"),
        UnknownFrame("future_frame", {"type": "future_frame"}),
        auth_ok(),  # an auth_ok goes through authenticated(), not apply()
    ):
        assert store.apply(frame) == []
    assert (store.presence("doc"), dict(store.identities)) == before


# --------------------------------------------------------------------------- presence


def test_presence_is_in_join_order_and_includes_me():
    store = store_with(("p-bob", "Bob"), ("p-carol", "Carol"))
    assert store.apply(DocPresenceStateFrame("doc", ("p-bob", ME))) == [PresenceChanged("doc")]
    assert ids(store.presence("doc")) == ["p-bob", ME]
    carol = store.identities["p-carol"]
    assert store.apply(PeerJoinedDocFrame("doc", "p-carol")) == [
        PeerJoined("doc", carol),
        PresenceChanged("doc"),
    ]
    assert ids(store.presence("doc")) == ["p-bob", ME, "p-carol"]
    assert store.presence("doc")[1] is store.me


def test_a_duplicate_join_changes_nothing():
    store = store_with(("p-bob", "Bob"))
    store.apply(DocPresenceStateFrame("doc", (ME,)))
    store.apply(PeerJoinedDocFrame("doc", "p-bob"))
    before = store.presence("doc")
    assert store.apply(PeerJoinedDocFrame("doc", "p-bob")) == []
    assert store.presence("doc") == before
    assert ids(before) == [ME, "p-bob"]


def test_duplicate_ids_in_a_presence_state_are_kept_once():
    store = store_with(("p-bob", "Bob"))
    store.apply(DocPresenceStateFrame("doc", (ME, "p-bob", ME, "p-bob")))
    assert ids(store.presence("doc")) == [ME, "p-bob"]


def test_an_identical_presence_state_is_not_a_change():
    store = store_with(("p-bob", "Bob"))
    assert store.apply(DocPresenceStateFrame("doc", (ME, "p-bob"))) == [PresenceChanged("doc")]
    assert store.apply(DocPresenceStateFrame("doc", (ME, "p-bob"))) == []
    # Same members in another order is another value of presence(doc).
    assert store.apply(DocPresenceStateFrame("doc", ("p-bob", ME))) == [PresenceChanged("doc")]
    assert ids(store.presence("doc")) == ["p-bob", ME]


def test_an_empty_presence_state_for_an_empty_document_is_not_a_change():
    store = store_with()
    assert store.apply(DocPresenceStateFrame("doc", ())) == []


def test_peer_left_removes_the_peer_and_reports_it():
    store = store_with(("p-bob", "Bob"), ("p-carol", "Carol"))
    store.apply(DocPresenceStateFrame("doc", (ME, "p-bob", "p-carol")))
    bob = store.identities["p-bob"]
    assert store.apply(PeerLeftDocFrame("doc", "p-bob")) == [
        PeerLeft("doc", bob),
        PresenceChanged("doc"),
    ]
    assert ids(store.presence("doc")) == [ME, "p-carol"]
    # Leaving again (or a peer never present) changes nothing.
    assert store.apply(PeerLeftDocFrame("doc", "p-bob")) == []
    assert store.apply(PeerLeftDocFrame("doc", "p-nobody")) == []


def test_a_peer_that_rejoins_goes_to_the_end():
    store = store_with(("p-bob", "Bob"))
    store.apply(DocPresenceStateFrame("doc", ("p-bob", ME)))
    store.apply(PeerLeftDocFrame("doc", "p-bob"))
    store.apply(PeerJoinedDocFrame("doc", "p-bob"))
    assert ids(store.presence("doc")) == [ME, "p-bob"]


def test_frames_about_untracked_documents_are_ignored():
    store = store_with(("p-bob", "Bob"), docs=())
    assert store.apply(DocPresenceStateFrame("other", (ME, "p-bob"))) == []
    assert store.apply(PeerJoinedDocFrame("other", "p-bob")) == []
    assert store.apply(PeerLeftDocFrame("other", "p-bob")) == []
    assert store.presence("other") == ()
    assert "other" not in store.tracked()
    assert list(store.tracked()) == []


def test_track_is_idempotent_and_keeps_presence():
    store = store_with(("p-bob", "Bob"))
    store.apply(DocPresenceStateFrame("doc", (ME, "p-bob")))
    store.track("doc")
    assert ids(store.presence("doc")) == [ME, "p-bob"]
    store.track("b")
    store.track("a")
    assert list(store.tracked()) == ["doc", "b", "a"]
    assert "a" in store.tracked()


def test_forget_stops_tracking_and_reports_a_change_only_if_someone_was_present():
    store = store_with(docs=("doc", "empty"))
    store.apply(DocPresenceStateFrame("doc", (ME,)))
    assert store.forget("doc") == [PresenceChanged("doc")]
    assert store.presence("doc") == ()
    assert "doc" not in store.tracked()
    assert store.forget("empty") == []
    assert store.forget("never-tracked") == []
    # Later frames about a forgotten document are ignored.
    assert store.apply(PeerJoinedDocFrame("doc", "p-bob")) == []


def test_presence_tuples_are_cached_and_refreshed_on_change():
    store = store_with(("p-bob", "Bob"))
    store.apply(DocPresenceStateFrame("doc", (ME,)))
    first = store.presence("doc")
    assert store.presence("doc") is first  # cached
    store.apply(PeerJoinedDocFrame("doc", "p-bob"))
    assert ids(store.presence("doc")) == [ME, "p-bob"]
    assert ids(first) == [ME]  # a snapshot handed out earlier never mutates


# ------------------------------------------------------------------- identity after presence


def test_identity_arriving_after_presence_replaces_the_placeholder():
    store = store_with(docs=("doc", "other"))
    assert store.apply(DocPresenceStateFrame("doc", (ME, "p-late"))) == [PresenceChanged("doc")]
    store.apply(DocPresenceStateFrame("other", ("p-late", ME)))
    placeholder = store.presence("doc")[1]
    assert placeholder == Peer.unknown("p-late")
    assert placeholder.name == "p-late"
    assert placeholder.is_anonymous
    assert placeholder.user_id is None

    changes = store.apply(identity("p-late", "Late Lynx", user_id="lynx"))
    late = Peer("p-late", "lynx", "Late Lynx", False)
    assert changes == [IdentityAdded(late), PresenceChanged("doc"), PresenceChanged("other")]
    assert store.presence("doc") == (store.me, late)  # same place in join order
    assert store.presence("other") == (late, store.me)


def test_a_joiner_whose_identity_is_unknown_gets_a_placeholder():
    store = store_with()
    store.apply(DocPresenceStateFrame("doc", (ME,)))
    assert store.apply(PeerJoinedDocFrame("doc", "p-x")) == [
        PeerJoined("doc", Peer.unknown("p-x")),
        PresenceChanged("doc"),
    ]


def test_an_identity_equal_to_its_placeholder_is_not_a_presence_change():
    # An anonymous peer whose name is its id looks exactly like the placeholder:
    # presence(doc) keeps its value, so no PresenceChanged (found by the model test).
    store = store_with()
    store.apply(PeerJoinedDocFrame("doc", "p-x"))
    before = store.presence("doc")
    changes = store.apply(PeerIdentityFrame("p-x", UserInfo(None, "p-x", True)))
    assert changes == [IdentityAdded(Peer("p-x", None, "p-x", True))]
    assert store.presence("doc") == before


# --------------------------------------------------------------------------- disconnects


def test_peer_disconnected_removes_from_every_document_then_the_identity():
    store = store_with(("p-bob", "Bob"), ("p-carol", "Carol"), docs=("a", "b", "c"))
    store.apply(DocPresenceStateFrame("a", (ME, "p-bob")))
    store.apply(DocPresenceStateFrame("b", ("p-bob", "p-carol", ME)))
    store.apply(DocPresenceStateFrame("c", (ME, "p-carol")))
    bob = store.identities["p-bob"]

    changes = store.apply(PeerDisconnectedFrame("p-bob"))
    assert changes == [
        PeerLeft("a", bob),
        PresenceChanged("a"),
        PeerLeft("b", bob),
        PresenceChanged("b"),
        IdentityRemoved(bob),
    ]
    assert ids(store.presence("a")) == [ME]
    assert ids(store.presence("b")) == ["p-carol", ME]
    assert ids(store.presence("c")) == [ME, "p-carol"]
    assert "p-bob" not in store.identities
    # A second notice changes nothing.
    assert store.apply(PeerDisconnectedFrame("p-bob")) == []


def test_disconnect_of_a_peer_in_no_document_only_removes_its_identity():
    store = store_with(("p-bob", "Bob"))
    bob = store.identities["p-bob"]
    assert store.apply(PeerDisconnectedFrame("p-bob")) == [IdentityRemoved(bob)]


# --------------------------------------------------------------------------- self removed


def test_server_removing_me_reports_self_removed_not_peer_left():
    store = store_with(("p-bob", "Bob"))
    store.apply(DocPresenceStateFrame("doc", (ME, "p-bob")))
    changes = store.apply(PeerLeftDocFrame("doc", ME))
    assert changes == [PresenceChanged("doc"), SelfRemoved("doc")]
    assert not any(isinstance(c, PeerLeft) for c in changes)
    assert ids(store.presence("doc")) == ["p-bob"]
    assert "doc" in store.tracked()  # the document stays entered: the client re-joins


# --------------------------------------------------------------------------- reset


def test_reset_empties_every_document_and_identity_but_keeps_tracking():
    store = store_with(("p-bob", "Bob"), docs=("a", "b", "empty"))
    store.apply(DocPresenceStateFrame("a", (ME, "p-bob")))
    store.apply(DocPresenceStateFrame("b", (ME,)))
    me = store.me

    changes = store.reset()
    assert changes == [PresenceChanged("a"), PresenceChanged("b")]  # one per non-empty doc
    assert store.presence("a") == store.presence("b") == store.presence("empty") == ()
    assert dict(store.identities) == {}
    assert list(store.tracked()) == ["a", "b", "empty"]
    assert store.me == me  # the last identity stays readable
    assert store.reset() == []  # nothing left to change


def test_authenticated_resets_the_previous_connection():
    store = store_with(("p-bob", "Bob"), docs=("a", "b"))
    store.apply(DocPresenceStateFrame("a", (ME, "p-bob")))
    changes = store.authenticated(auth_ok(peer_id="peer-me-2"))
    assert changes == [PresenceChanged("a")]
    assert store.me == Peer("peer-me-2", "alice", "Alice", False)
    assert dict(store.identities) == {"peer-me-2": store.me}
    assert store.presence("a") == ()
    assert list(store.tracked()) == ["a", "b"]
    # The old self id is now just another peer id: its leaving is not SelfRemoved.
    store.apply(DocPresenceStateFrame("a", ("peer-me-2", ME)))
    assert store.apply(PeerLeftDocFrame("a", ME)) == [
        PeerLeft("a", Peer.unknown(ME)),
        PresenceChanged("a"),
    ]


# --------------------------------------------------------------------------- Peer


def test_peer_is_a_frozen_value():
    peer = Peer("p", "u", "Name", False)
    assert peer == Peer("p", "u", "Name", False)
    assert hash(peer) == hash(Peer("p", "u", "Name", False))
    with pytest.raises(AttributeError):
        peer.name = "Other"  # type: ignore[misc]


# --------------------------------------------------------------------------- model-based


PEER_IDS = (ME, "p1", "p2", "p3")
DOCS = ("d1", "d2", "d3")
NAMES = ("Ann", "Ben", "p1", "p2")  # "p1"/"p2" make identities equal to placeholders


class Model:
    """The naive reading of the contract: a list of ids per tracked document."""

    def __init__(self) -> None:
        self.me: Peer | None = None
        self.identities: dict[str, Peer] = {}
        self.docs: dict[str, list[str]] = {}

    def presence(self, doc: str) -> tuple[Peer, ...]:
        return tuple(self.identities.get(p) or Peer.unknown(p) for p in self.docs.get(doc, ()))


class PresenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MembershipStore()
        self.model = Model()

    # Each rule: snapshot the model's presence, apply to both, compare the changes.
    def _check(self, changes: list[object], before: dict[str, tuple[Peer, ...]]) -> None:
        changed_docs = Counter(c.document_id for c in changes if isinstance(c, PresenceChanged))
        expected = {d for d in DOCS if self.model.presence(d) != before[d]}
        assert set(changed_docs) == expected, (changes, before)
        assert all(n == 1 for n in changed_docs.values()), changes

    def _before(self) -> dict[str, tuple[Peer, ...]]:
        return {d: self.model.presence(d) for d in DOCS}

    @rule(pid=st.sampled_from(PEER_IDS), name=st.sampled_from(NAMES), anon=st.booleans())
    def authenticate(self, pid: str, name: str, anon: bool) -> None:
        before = self._before()
        user = UserInfo(None if anon else f"user-{name}", name, anon)
        changes = self.store.authenticated(AuthOkFrame("relay", pid, user, ("presence",)))
        me = Peer.from_user(pid, user)
        self.model.me = me
        self.model.identities = {pid: me}
        for members in self.model.docs.values():
            members.clear()
        self._check(changes, before)
        assert not any(isinstance(c, PeerJoined | PeerLeft | SelfRemoved) for c in changes)

    @rule()
    def reset(self) -> None:
        before = self._before()
        changes = self.store.reset()
        self.model.identities = {}
        for members in self.model.docs.values():
            members.clear()
        self._check(changes, before)
        assert all(isinstance(c, PresenceChanged) for c in changes)

    @rule(doc=st.sampled_from(DOCS))
    def track(self, doc: str) -> None:
        self.store.track(doc)
        self.model.docs.setdefault(doc, [])

    @rule(doc=st.sampled_from(DOCS))
    def forget(self, doc: str) -> None:
        before = self._before()
        changes = self.store.forget(doc)
        self.model.docs.pop(doc, None)
        self._check(changes, before)

    @rule(
        pid=st.sampled_from(PEER_IDS),
        name=st.sampled_from(NAMES),
        uid=st.sampled_from((None, "u1")),
    )
    def peer_identity(self, pid: str, name: str, uid: str | None) -> None:
        before = self._before()
        changes = self.store.apply(identity(pid, name, uid))
        peer = Peer(pid, uid, name, uid is None)
        added = self.model.identities.get(pid) != peer
        self.model.identities[pid] = peer
        self._check(changes, before)
        assert changes.count(IdentityAdded(peer)) == (1 if added else 0)

    @rule(pid=st.sampled_from(PEER_IDS))
    def peer_disconnected(self, pid: str) -> None:
        before = self._before()
        changes = self.store.apply(PeerDisconnectedFrame(pid))
        old = self.model.identities.pop(pid, None)
        left_docs = [d for d, m in self.model.docs.items() if pid in m]
        for d in left_docs:
            self.model.docs[d].remove(pid)
        self._check(changes, before)
        is_me = self.model.me is not None and pid == self.model.me.peer_id
        if is_me:
            assert [c.document_id for c in changes if isinstance(c, SelfRemoved)] == left_docs
        else:
            assert [c.document_id for c in changes if isinstance(c, PeerLeft)] == left_docs
        if old is not None:
            assert changes[-1] == IdentityRemoved(old)  # after every PeerLeft
        else:
            assert not any(isinstance(c, IdentityRemoved) for c in changes)

    @rule(doc=st.sampled_from(DOCS), pid=st.sampled_from(PEER_IDS))
    def peer_joined(self, doc: str, pid: str) -> None:
        before = self._before()
        changes = self.store.apply(PeerJoinedDocFrame(doc, pid))
        members = self.model.docs.get(doc)
        joined = members is not None and pid not in members
        if joined:
            assert members is not None
            members.append(pid)
        self._check(changes, before)
        assert [c for c in changes if isinstance(c, PeerJoined)] == (
            [PeerJoined(doc, self.model.presence(doc)[-1])] if joined else []
        )

    @rule(doc=st.sampled_from(DOCS), pid=st.sampled_from(PEER_IDS))
    def peer_left(self, doc: str, pid: str) -> None:
        before = self._before()
        changes = self.store.apply(PeerLeftDocFrame(doc, pid))
        members = self.model.docs.get(doc)
        left = members is not None and pid in members
        if members is not None and left:
            members.remove(pid)
        self._check(changes, before)
        is_me = self.model.me is not None and pid == self.model.me.peer_id
        assert (SelfRemoved(doc) in changes) == (left and is_me)
        assert any(isinstance(c, PeerLeft) for c in changes) == (left and not is_me)

    @rule(doc=st.sampled_from(DOCS), pids=st.lists(st.sampled_from(PEER_IDS), max_size=5))
    def presence_state(self, doc: str, pids: list[str]) -> None:
        before = self._before()
        changes = self.store.apply(DocPresenceStateFrame(doc, tuple(pids)))
        if doc in self.model.docs:
            self.model.docs[doc] = list(dict.fromkeys(pids))
        self._check(changes, before)
        assert all(isinstance(c, PresenceChanged) for c in changes)

    @invariant()
    def same_as_model(self) -> None:
        for doc in DOCS:
            assert self.store.presence(doc) == self.model.presence(doc), doc
            assert (doc in self.store.tracked()) == (doc in self.model.docs)
            peers = self.store.presence(doc)
            assert len({p.peer_id for p in peers}) == len(peers)  # no duplicates
        assert dict(self.store.identities) == self.model.identities
        assert self.store.me == self.model.me


TestPresenceMachine = PresenceMachine.TestCase
TestPresenceMachine.settings = settings(max_examples=400, stateful_step_count=30, deadline=None)
TestPresenceMachine.pytestmark = [pytest.mark.slow]
