"""SafeEmitter: one failing callback never breaks the emitter or its caller."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ratatoskr_client.asyncio.emitter import SafeEmitter
from ratatoskr_client.errors import CallbackError, RatatoskrError


class Boom(Exception):
    pass


def test_a_raising_sync_callback_is_logged_and_emitted_as_error(caplog):
    emitter = SafeEmitter()
    calls: list[str] = []
    errors: list[BaseException] = []

    def first(x: int) -> None:
        calls.append(f"first {x}")

    def bad(x: int) -> None:
        raise Boom(f"bad {x}")

    def last(x: int) -> None:
        calls.append(f"last {x}")

    emitter.on("tick", first)
    emitter.on("tick", bad)
    emitter.on("tick", last)
    emitter.on("error", errors.append)

    assert emitter.emit("tick", 7) is True  # does not raise
    assert calls == ["first 7", "last 7"]  # the others still ran, in order
    assert len(errors) == 1
    err = errors[0]
    assert isinstance(err, CallbackError)
    assert isinstance(err, RatatoskrError)
    assert err.event == "tick"
    assert isinstance(err.__cause__, Boom)
    assert "bad 7" in str(err)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "'tick'" in failures[0].getMessage()
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is Boom


async def test_a_raising_coroutine_callback_is_logged_and_emitted_as_error(caplog):
    emitter = SafeEmitter()
    got_error: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    ran: list[str] = []

    async def bad(x: int) -> None:
        await asyncio.sleep(0)
        raise Boom(f"async {x}")

    async def good(x: int) -> None:
        ran.append(f"good {x}")

    emitter.on("tick", bad)
    emitter.on("tick", good)
    emitter.on("error", got_error.set_result)
    emitter.emit("tick", 3)

    err = await asyncio.wait_for(got_error, 2)
    assert isinstance(err, CallbackError)
    assert err.event == "tick"
    assert isinstance(err.__cause__, Boom)
    await asyncio.wait_for(emitter.drain(1.0), 2)
    assert ran == ["good 3"]
    assert any(
        r.levelno == logging.ERROR and r.exc_info and r.exc_info[0] is Boom for r in caplog.records
    )


def test_an_error_with_no_listener_never_raises(caplog):
    emitter = SafeEmitter()
    assert emitter.emit("error", RatatoskrError("nobody listens")) is False
    assert emitter.emit("error", "not even an exception") is False
    assert emitter.emit("error") is False
    assert any("nobody listens" in r.getMessage() for r in caplog.records)


def test_a_failing_callback_without_error_listener_never_raises(caplog):
    emitter = SafeEmitter()
    emitter.on("tick", lambda: 1 / 0)
    assert emitter.emit("tick") is True
    assert any(
        r.exc_info and r.exc_info[0] is ZeroDivisionError
        for r in caplog.records
        if r.levelno == logging.ERROR
    )


def test_an_error_handler_that_raises_does_not_loop(caplog):
    emitter = SafeEmitter()
    error_calls: list[BaseException] = []

    def bad_error_handler(err: BaseException) -> None:
        error_calls.append(err)
        raise Boom("error handler fails too")

    emitter.on("error", bad_error_handler)
    emitter.on("tick", lambda: 1 / 0)
    emitter.emit("tick")
    assert len(error_calls) == 1  # called for the tick failure, not for its own
    assert isinstance(error_calls[0], CallbackError)
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in logged if r.exc_info] == [ZeroDivisionError, Boom]


async def test_an_async_error_handler_that_raises_does_not_loop():
    emitter = SafeEmitter()
    calls: list[BaseException] = []
    done = asyncio.Event()

    async def bad_error_handler(err: BaseException) -> None:
        calls.append(err)
        done.set()
        raise Boom("async error handler fails")

    emitter.on("error", bad_error_handler)
    emitter.on("tick", lambda: 1 / 0)
    emitter.emit("tick")
    await asyncio.wait_for(done.wait(), 2)
    await emitter.drain(1.0)
    assert len(calls) == 1
    assert emitter.complete


def test_once_listeners_run_once():
    emitter = SafeEmitter()
    calls: list[int] = []
    emitter.once("tick", calls.append)
    emitter.emit("tick", 1)
    emitter.emit("tick", 2)
    assert calls == [1]


def test_emit_without_listeners_returns_false():
    assert SafeEmitter().emit("tick", 1) is False


async def test_drain_waits_for_callbacks_then_cancels_the_slow_ones():
    emitter = SafeEmitter()
    finished: list[str] = []
    cancelled = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0)
        finished.append("quick")

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    emitter.on("tick", quick)
    emitter.on("tick", stuck)
    emitter.emit("tick")
    await asyncio.wait_for(emitter.drain(0.05), 2)
    assert finished == ["quick"]
    assert cancelled.is_set()
    assert emitter.complete


async def test_cancelled_callback_is_not_an_error():
    emitter = SafeEmitter()
    errors: list[BaseException] = []
    emitter.on("error", errors.append)

    async def stuck() -> None:
        await asyncio.Event().wait()

    emitter.on("tick", stuck)
    emitter.emit("tick")
    await emitter.drain(0.0)
    assert errors == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_not_swallowed(exc):
    emitter = SafeEmitter()

    def handler() -> None:
        raise exc

    emitter.on("tick", handler)
    with pytest.raises(exc):
        emitter.emit("tick")


def test_the_emitter_says_when_an_event_gains_its_first_callback_and_loses_its_last():
    said: list[tuple[str, bool]] = []
    emitter = SafeEmitter(listening=lambda event, on: said.append((event, on)))

    def first(x: int) -> None:
        pass

    def second(x: int) -> None:
        pass

    emitter.on("tick", first)
    emitter.on("tick", second)  # not the first: nothing to say
    assert said == [("tick", True)]
    emitter.remove_listener("tick", first)
    assert said == [("tick", True)]
    emitter.remove_listener("tick", second)
    assert said == [("tick", True), ("tick", False)]
    # A once callback removes itself when it runs: that is said too.
    emitter.once("tock", first)
    emitter.emit("tock", 1)
    assert said[-2:] == [("tock", True), ("tock", False)]
    emitter.on("tick")(first)  # the decorator form
    emitter.on("tock", second)
    emitter.remove_all_listeners()
    assert said[-4:] == [("tick", True), ("tock", True), ("tick", False), ("tock", False)]


def test_the_client_tells_its_core_which_membership_events_have_callbacks():
    # White box: the core records no effect for an event nobody listens to.
    from ratatoskr_client import RatatoskrClient

    client = RatatoskrClient("http://relay.test")

    def unheard() -> frozenset[str]:  # (one shared set per combination: read it anew)
        return client._core._unheard

    assert unheard() == {
        "peer-joined", "peer-left", "peer-identity", "peer-disconnected", "presence-changed",
        "user-joined", "user-left",  # (#22)
    }  # fmt: skip

    def joined(doc: str, peer: object) -> None:
        pass

    client.on("peer-joined", joined)
    client.once("presence-changed", lambda doc, peers: None)
    assert "peer-joined" not in unheard() and "presence-changed" not in unheard()
    client.off("peer-joined", joined)
    assert "peer-joined" in unheard()
    client._emitter.emit("presence-changed", "doc", ())  # the once callback runs, and goes
    assert "presence-changed" in unheard()


def test_an_emitter_with_seven_events_holds_less_than_its_pyee_base_would():
    """A simulated Locust user's client listens to seven events: with pyee's
    OrderedDict per event and an empty task set that was 3.5 KiB per client;
    a plain dict each (and the set made on first use) is 2.2 KiB. Allocation
    sizes are exact here (tracemalloc), not the machine's RSS."""
    import gc
    import tracemalloc

    def callback(*_: object) -> None:
        pass

    count = 200
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        emitters = []
        for _ in range(count):
            emitter = SafeEmitter(listening=lambda event, on: None)
            for event in ("a", "b", "c", "d", "e", "f", "g"):
                emitter.on(event, callback)
            emitters.append(emitter)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_emitter = sum(s.size_diff for s in after.compare_to(before, "filename")) / count
    assert per_emitter < 2.8 * 1024, per_emitter
    assert [emitter.listeners("d") for emitter in emitters[:1]] == [[callback]]


async def test_a_coroutine_callback_after_none_is_tracked_and_drained():
    emitter = SafeEmitter()
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    emitter.on("tick", slow)
    assert emitter.running() == 0
    emitter.emit("tick")
    await asyncio.wait_for(started.wait(), 5)
    assert emitter.running() == 1
    await emitter.drain(0.01)
    assert emitter.running() == 0
