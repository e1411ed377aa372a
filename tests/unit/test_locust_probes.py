"""The receiver-side measurements of the Locust users, as pure logic (times are
given, never read from a clock), and the hand-over to gevent's hub.

Locust itself is never imported here: it would monkey-patch the test session.
"""

from __future__ import annotations

import importlib.util
import sys
import threading

import pytest

from ratatoskr_client.locust._probes import (
    ENTERED_AT,
    SENT_AT,
    ConvergenceTracker,
    delivery_delay,
    stamped,
)


def test_stamping_adds_one_key_and_never_mutates():
    payload = {"reaction": "🎉"}
    assert stamped(payload, 100.0) == {"reaction": "🎉", SENT_AT: 100.0}
    assert payload == {"reaction": "🎉"}
    assert stamped([1, 2], 100.0) == {"payload": [1, 2], SENT_AT: 100.0}


def test_delivery_delay():
    assert delivery_delay(stamped({}, 100.0), 100.25) == 0.25
    assert delivery_delay({"x": 1}, 100.0) is None  # not ours
    assert delivery_delay("text", 100.0) is None
    assert delivery_delay({SENT_AT: "yesterday"}, 100.0) is None
    # A receiver whose clock is behind the sender's: 0, never negative.
    assert delivery_delay(stamped({}, 100.0), 99.0) == 0.0


def test_convergence_is_from_the_enter_to_our_sighting():
    tracker = ConvergenceTracker()
    tracker.joined("doc", "peer-a", now=100.3)
    assert tracker.announced("doc", "peer-a", {ENTERED_AT: 100.0}) == pytest.approx(0.3)
    # Reported once: a second announcement (or any later message) reports nothing.
    assert tracker.announced("doc", "peer-a", {ENTERED_AT: 100.0}) is None
    assert len(tracker) == 0


def test_convergence_ignores_what_it_did_not_see_happen():
    tracker = ConvergenceTracker()
    # We entered after peer-a: we never saw it join, so there is nothing to report.
    assert tracker.announced("doc", "peer-a", {ENTERED_AT: 100.0}) is None
    tracker.joined("doc", "peer-b", now=101.0)
    assert tracker.announced("other-doc", "peer-b", {ENTERED_AT: 100.0}) is None
    assert tracker.announced("doc", "peer-b", {"reaction": "👍"}) is None  # not an announcement
    assert tracker.announced("doc", "peer-b", "text") is None
    tracker.left("doc", "peer-b")  # left before announcing: forgotten
    assert len(tracker) == 0
    tracker.joined("doc", "peer-c", now=101.0)
    tracker.reset()  # our connection was lost
    assert tracker.announced("doc", "peer-c", {ENTERED_AT: 100.0}) is None


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="needs gevent")
def test_a_tracker_with_nothing_pending_holds_no_table():
    """A join is pending until its announcement, a message later: a user that
    saw nine peers join keeps no table of nine entries once they announced."""
    tracker = ConvergenceTracker()
    for n in range(9):
        tracker.joined("doc", f"p{n}", 10.0)
    for n in range(8):
        assert tracker.announced("doc", f"p{n}", {ENTERED_AT: 9.5}) == 0.5
    assert len(tracker) == 1 and sys.getsizeof(tracker._seen) > sys.getsizeof({})
    tracker.left("doc", "p8")
    assert len(tracker) == 0
    assert sys.getsizeof(tracker._seen) == sys.getsizeof({})
    tracker.joined("doc", "p9", 11.0)  # and it takes new ones as before
    assert tracker.announced("doc", "p9", {ENTERED_AT: 10.0}) == 1.0


def test_the_hub_inbox_reports_items_from_another_thread_in_order():
    import gevent
    import gevent.event

    from ratatoskr_client.locust._hub import HubInbox

    reported: list[int] = []
    done = gevent.event.Event()

    def report(item: int) -> None:
        assert threading.current_thread() is threading.main_thread()
        reported.append(item)
        if len(reported) == 500:
            done.set()

    inbox = HubInbox(report)
    producer = threading.Thread(target=lambda: [inbox.put(i) for i in range(500)])
    producer.start()
    assert done.wait(timeout=10), reported[-5:]
    producer.join()
    assert reported == list(range(500))
    assert "gevent.monkey" not in sys.modules or not sys.modules["gevent.monkey"].saved
