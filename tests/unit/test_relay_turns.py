"""The relay's fairness rule (:class:`~ratatoskr_client.server.core.turns.Turns`),
with the work of each frame given in seconds (no clock, no event loop).

* A turn is TURN_FRAMES frames, TURN_BYTES of payload or ROUND_SECONDS of
  work, at least one frame; then the connection waits in a line.
* Each round gives their turn to the head of the line, as many as are
  expected to take ROUND_SECONDS; once a round has done that much work while
  connections wait, a given turn is paused (back to the front, unfinished) and
  any other turn ends after its frame (back of the line).
* So with hundreds of flooders one round does about ROUND_SECONDS of work
  plus a frame per connection served, a quiet connection's frame is handled in
  the round it arrives, and each flooder has whole turns in arrival order.
"""

from __future__ import annotations

import pytest

from ratatoskr_client.server.core.limits import ROUND_SECONDS, TURN_BYTES, TURN_FRAMES
from ratatoskr_client.server.core.turns import GO_ON, OVER, PAUSED, Turns

#: the work of a frame refused by a limit (decoded, counted, dropped), roughly
REFUSED = 20e-6


def test_a_lone_turn_ends_after_its_frames_bytes_or_work() -> None:
    turns: Turns[str] = Turns()
    assert turns.over(TURN_FRAMES - 1, 100, 0.001, 1e-5, -1) == GO_ON
    assert turns.over(TURN_FRAMES, 100, 0.001, 1e-5, -1) == OVER
    assert turns.over(1, TURN_BYTES, 0.001, 1e-5, -1) == OVER
    assert turns.over(1, 100, ROUND_SECONDS, 1e-5, -1) == OVER
    # Nobody waits: however much the loop has done, the turn goes on.
    turns.used = 100 * ROUND_SECONDS
    assert turns.over(1, 100, 1e-5, 1e-5, -1) == GO_ON


def test_once_the_round_is_spent_a_given_turn_pauses_and_others_end() -> None:
    turns: Turns[str] = Turns()
    assert turns.wait("a", TURN_FRAMES, TURN_FRAMES * REFUSED) is True  # first in line
    assert turns.wait("b", TURN_FRAMES, TURN_FRAMES * REFUSED) is False
    assert turns.next_round() == ["a", "b"]  # 2 x 0.64 ms expected: both fit
    given = turns.round
    assert turns.wait("c", TURN_FRAMES, TURN_FRAMES * REFUSED) is True
    # "a" has its turn: two frames, then nothing more has arrived from it.
    assert turns.over(1, 100, ROUND_SECONDS * 0.45, ROUND_SECONDS * 0.45, given) == GO_ON
    assert turns.over(2, 200, ROUND_SECONDS * 0.9, ROUND_SECONDS * 0.45, given) == GO_ON
    # "b" has its turn: its first frame takes the round past ROUND_SECONDS
    # while "c" waits, so the rest of its turn is paused.
    assert turns.over(1, 100, ROUND_SECONDS * 0.2, ROUND_SECONDS * 0.2, given) == PAUSED
    # A frame arriving on a quiet connection is still handled, then that
    # connection joins the line; one whose turn was given earlier has had it.
    assert turns.over(1, 100, REFUSED, REFUSED, -1) == OVER
    assert turns.over(1, 100, REFUSED, REFUSED, given - 1) == OVER
    # A paused turn goes back to the front (in the order they pause), ahead
    # of those waiting already. "b" is expected to fill a round by itself.
    turns.wait("b", 1, ROUND_SECONDS * 0.2, paused=True)
    turns.wait("q", 1, REFUSED)
    assert len(turns) == 3
    assert turns.next_round() == ["b"]
    assert turns.next_round() == ["c", "q"]


def test_paused_turns_keep_their_order_at_the_front() -> None:
    turns: Turns[str] = Turns()
    for name in "abcd":
        turns.wait(name, TURN_FRAMES, TURN_FRAMES * REFUSED)
    turns.wait("e", TURN_FRAMES, TURN_FRAMES * REFUSED)
    assert turns.next_round() == ["a", "b", "c", "d", "e"][:5]
    for name in "xyz":
        turns.wait(name, TURN_FRAMES, TURN_FRAMES * REFUSED)
    turns.wait("c", 2, 2 * REFUSED, paused=True)
    turns.wait("d", 1, REFUSED, paused=True)
    turns.wait("e", 1, REFUSED, paused=True)
    assert turns.next_round() + turns.next_round() == ["c", "d", "e", "x", "y", "z"]


def test_a_round_gives_turns_expected_to_fill_it_at_least_one() -> None:
    turns: Turns[int] = Turns()
    # Each waiter's last turn: 8 frames at 50 us, so a whole one is expected
    # to take 32 x 50 us = 1.6 ms: three fit in a 5 ms round, the fourth ends it.
    for i in range(10):
        turns.wait(i, 8, 8 * 50e-6)
    assert turns.next_round() == [0, 1, 2, 3]
    # One expected to take more than a round still has its turn, alone.
    turns2: Turns[str] = Turns()
    turns2.wait("heavy", 1, 10 * ROUND_SECONDS)
    turns2.wait("light", 1, REFUSED)
    assert turns2.next_round() == ["heavy"]
    assert turns2.next_round() == ["light"]
    assert turns2.next_round() == []
    assert len(turns2) == 0


def test_a_round_starts_with_its_budget_whole() -> None:
    turns: Turns[str] = Turns()
    turns.used = 3 * ROUND_SECONDS  # work done while nobody waited
    turns.wait("a", TURN_FRAMES, TURN_FRAMES * REFUSED)
    assert turns.used == 0.0  # a round begins with the first in line
    turns.over(1, 100, ROUND_SECONDS, ROUND_SECONDS, -1)
    round_before = turns.round
    turns.next_round()
    assert turns.used == 0.0
    assert turns.round == round_before + 1


QUIET = -1


def simulate(
    flooders: int, rounds: int, frame_cost: float, quiet_every: int = 7
) -> tuple[list[float], list[int], list[int], list[int]]:
    """Drive :class:`Turns` as the relay's event loop does. Flooders have an
    endless backlog of frames costing ``frame_cost`` each, and their first
    frames arrive at once; every ``quiet_every`` rounds a frame arrives on a
    quiet connection. Each round, the connections given their turn run
    first, then those whose frames have just arrived, then the next round
    begins. Returns the work done in each round, the rounds in which the
    quiet frames were handled, the order in which flooders finished whole
    turns, and how many rounds each whole turn spanned."""
    turns: Turns[int] = Turns()
    frames = dict.fromkeys(range(flooders), 0)  # frames of the current turn
    spent = dict.fromkeys(range(flooders), 0.0)
    began: dict[int, int] = {}  # the round in which the current turn began
    given: dict[int, int] = {}
    work: list[float] = []
    quiet_handled: list[int] = []
    finished: list[int] = []
    spans: list[int] = []
    ready = list(range(flooders))  # the first frames: nobody waits yet
    for r in range(rounds):
        done = 0.0
        for i in ready:
            if i == QUIET:
                continue  # given a turn with nothing to read: it waits for a frame
            began.setdefault(i, r)
            while True:
                frames[i] += 1
                spent[i] += frame_cost
                done += frame_cost
                verdict = turns.over(frames[i], 0, spent[i], frame_cost, given.get(i, -1))
                if verdict == GO_ON:
                    continue
                turns.wait(i, frames[i], spent[i], paused=verdict == PAUSED)
                if verdict == OVER:
                    finished.append(i)
                    spans.append(r - began.pop(i) + 1)
                    frames[i], spent[i] = 0, 0.0
                break
        if r % quiet_every == 0:
            verdict = turns.over(1, 0, frame_cost, frame_cost, -1)
            done += frame_cost
            quiet_handled.append(r)
            if verdict != GO_ON:
                turns.wait(QUIET, 1, frame_cost)
        work.append(done)
        ready = turns.next_round()
        for i in ready:
            given[i] = turns.round
    return work, quiet_handled, finished, spans


@pytest.mark.parametrize("flooders", [1, 10, 200, 2000])
def test_many_flooders_cost_a_round_about_round_seconds(flooders: int) -> None:
    rounds = 600
    work, quiet, finished, spans = simulate(flooders, rounds, REFUSED)
    # The first round: one whole turn, then at most ROUND_SECONDS of work
    # until every other flooder has had its first frame.
    assert work[0] <= TURN_FRAMES * REFUSED + ROUND_SECONDS + flooders * REFUSED
    # Then a round does ROUND_SECONDS plus at most a frame for each
    # connection it serves: those that fit, and the quiet one.
    fit = ROUND_SECONDS // (TURN_FRAMES * REFUSED) + 1
    assert max(work[1:]) <= ROUND_SECONDS + (fit + 2) * REFUSED
    # Every quiet frame is handled in the round in which it arrives.
    assert quiet == list(range(0, rounds, 7))
    # Flooders finish whole turns in arrival order, each within two rounds
    # (a turn paused in one round goes on first in the next).
    n = len(finished) // flooders * flooders
    assert n >= flooders
    assert finished[:n] == list(range(flooders)) * (n // flooders)
    assert max(spans[flooders:]) <= 2


def test_costly_frames_shrink_the_rounds_turns_not_their_work() -> None:
    # Frames costing a fifth of a round (an allowed join fanned out to many):
    # each turn is cut by its work (5 frames), one turn per round.
    work, quiet, finished, _spans = simulate(50, 200, ROUND_SECONDS / 5)
    assert max(work[1:]) <= 2 * ROUND_SECONDS + ROUND_SECONDS / 5
    assert quiet == list(range(0, 200, 7))
    assert finished[:100] == list(range(50)) * 2
