"""The blocking client's process-level promises, tested in child processes:
Ctrl-C interrupts a blocking call promptly, and neither Ctrl-C nor exiting
without close() leaves a thread, a socket or a pending task behind.

Each child registers a probe with ``atexit`` *before* it imports the client, so
the probe runs last (atexit is last-in, first-out) and reports what is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from tests.relay_thread import RelayThread

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the probe reads /proc/self"
)

WAIT = 10.0

PROBE = textwrap.dedent(
    """
    import atexit, json, os, sys, threading, time

    def os_threads():
        # A joined thread may still be an OS task for a moment: Python's join()
        # returns just before the thread's last instructions. Give it a second.
        deadline = time.monotonic() + 1.0
        while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(os.listdir("/proc/self/task"))

    def probe():
        sockets = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                pass  # the descriptor listdir() itself used
        report = {
            "python threads": [t.name for t in threading.enumerate()],
            "os threads": os_threads(),
            "sockets": sockets,
        }
        print("PROBE " + json.dumps(report), flush=True)

    atexit.register(probe)
    """
)

BLOCKED_IN_WAIT = PROBE + textwrap.dedent(
    """
    import faulthandler, signal
    # Where every thread is, should the test find this process stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    from ratatoskr_client.sync import RatatoskrClient

    client = RatatoskrClient(sys.argv[1])
    client.connect()
    client.enter_document("doc")

    def never(peers):
        # Runs on the loop thread once the wait has begun: the main thread is
        # now inside wait_for_presence, where Ctrl-C must reach it.
        print("ready", flush=True)
        return False

    client.wait_for_presence("doc", never)
    """
)

EXITS_WITHOUT_CLOSE = PROBE + textwrap.dedent(
    """
    {patch}
    from ratatoskr_client.sync import RatatoskrClient

    first = RatatoskrClient(sys.argv[1])
    first.connect()
    first.enter_document("doc")
    second = RatatoskrClient(sys.argv[1])
    second.connect()
    second.enter_document("doc")
    second.set_state("doc", "cursor", [1, 2])
    first.send_ephemeral("doc", "bye")
    watch = second.watch_presence("doc")
    assert len(next(watch)) == 2
    print("ready", flush=True)
    # ...and the script simply ends: no close(), a watch still registered.
    """
)


NOTHING_LEFT = {"python threads": ["MainThread"], "os threads": 1, "sockets": 0}


FORKS = PROBE + textwrap.dedent(
    """
    from ratatoskr_client import ConnectionClosed
    from ratatoskr_client.sync import RatatoskrClient

    parents = RatatoskrClient(sys.argv[1])
    parents.connect()
    pid = os.fork()  # as Locust's --processes does
    if pid == 0:
        try:
            parents.enter_document("doc")
        except ConnectionClosed:
            pass  # the parent's loop thread does not exist in the child
        else:
            raise AssertionError("a client from before the fork worked")
        with RatatoskrClient(sys.argv[1]) as own:  # a loop of its own
            assert own.enter_document("doc") == (own.me,)
        print("child ok", flush=True)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert parents.enter_document("doc") == (parents.me,)  # unaffected
    print("ready", flush=True)
    """
)


GREENLETS_WAIT_TOGETHER = textwrap.dedent(
    """
    import sys
    from gevent import monkey; monkey.patch_all()
    import gevent
    from gevent.event import Event
    from ratatoskr_client.sync import RatatoskrClient

    N = 50
    saw_everyone = []
    everyone_saw_everyone = Event()

    def participant(i):
        with RatatoskrClient(sys.argv[1]) as client:
            client.enter_document("room")
            # Returns only once all N greenlets have entered: each one's wait
            # must leave the hub free for the others.
            seen = len(client.wait_for_presence("room", lambda ps: len(ps) >= N, timeout=20))
            # Nobody leaves before everyone has seen everyone (a participant
            # whose wait started late would otherwise see the others go).
            saw_everyone.append(i)
            if len(saw_everyone) == N:
                everyone_saw_everyone.set()
            everyone_saw_everyone.wait(20)
            return seen

    greenlets = [gevent.spawn(participant, i) for i in range(N)]
    gevent.joinall(greenlets, raise_error=True)
    print(sorted(g.value for g in greenlets) == [N] * N, flush=True)
    """
)


@pytest.fixture
def relay_thread() -> Iterator[RelayThread]:
    with RelayThread() as relay:
        yield relay


def probe_report(stdout: str) -> dict[str, object]:
    lines = [line for line in stdout.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0].removeprefix("PROBE "))  # type: ignore[no-any-return]


def stuck(child: subprocess.Popen[str]) -> str:
    """What a child that did not end shows: its signal masks (the kernel's
    view) and every thread's stack (faulthandler, on SIGUSR1); it is killed."""
    try:
        with open(f"/proc/{child.pid}/status") as status:
            masks = [
                line.strip()
                for line in status
                if line.startswith(("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd"))
            ]
    except OSError as exc:
        masks = [str(exc)]
    child.send_signal(signal.SIGUSR1)
    try:  # (it is stuck: the stacks are written at once, then it is killed)
        out, err = child.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    return f"{masks}\nstdout: {out}\nstderr: {err}"


def start(script: str, url: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", script, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], WAIT)
    if not ready:
        child.kill()
        pytest.fail(f"the child never got ready: {child.communicate()}")
    # Byte by byte from the pipe itself: a buffered readline() may take in the
    # lines after "ready" too (the PROBE line of a child that ends at once),
    # and communicate() then reads the pipe past that buffer, losing them.
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(child.stdout.fileno(), 1)
        if not byte:
            break
        line += byte
    assert line == b"ready\n", (line, child.communicate(timeout=WAIT))
    return child


def test_ctrl_c_interrupts_a_blocking_call_promptly_and_cleanly(
    relay_thread: RelayThread, ctrl_c_raises: None
) -> None:
    child = start(BLOCKED_IN_WAIT, relay_thread.url)
    relay_thread.wait_until(lambda stats: stats.memberships == 1, WAIT)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    try:
        out, err = child.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Ctrl-C did not end the process: {stuck(child)}")
    elapsed = time.monotonic() - sent

    assert child.returncode == -signal.SIGINT  # died of KeyboardInterrupt
    assert elapsed < 3.0, f"Ctrl-C took {elapsed:.1f} s"
    assert err.count("Traceback") == 1, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "wait_for_presence" in err  # interrupted where it was blocked
    assert probe_report(out) == NOTHING_LEFT
    # It left its document and hung up: the relay's tables are empty again.
    relay_thread.wait_until(lambda stats: stats.connections == 0 and stats.memberships == 0, WAIT)


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param("", id="plain"),
        pytest.param("from gevent import monkey; monkey.patch_all()", id="gevent-patched"),
    ],
)
def test_exit_without_close_leaves_nothing_behind(relay_thread: RelayThread, patch: str) -> None:
    if patch and importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent (the 'locust' extra) is not installed")
    url = relay_thread.url
    if patch:  # and resolve a name: asyncio's resolver threads would be greenlets
        url = url.replace("127.0.0.1", "localhost")
    child = start(EXITS_WITHOUT_CLOSE.replace("{patch}", patch), url)
    out, err = child.communicate(timeout=WAIT)
    assert child.returncode == 0, err
    assert err == ""
    assert probe_report(out) == NOTHING_LEFT
    relay_thread.wait_until(lambda stats: stats.connections == 0 and stats.memberships == 0, WAIT)


def test_a_forked_child_gets_a_loop_of_its_own(relay_thread: RelayThread) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", FORKS, relay_thread.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = child.communicate(timeout=WAIT)
    assert child.returncode == 0, err
    assert "child ok\nready\n" in out
    assert probe_report(out) == NOTHING_LEFT


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="needs gevent")
def test_greenlets_wait_concurrently_under_gevent(relay_thread: RelayThread) -> None:
    child = subprocess.run(
        [sys.executable, "-c", GREENLETS_WAIT_TOGETHER, relay_thread.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "True\n"
    assert child.stderr == ""
