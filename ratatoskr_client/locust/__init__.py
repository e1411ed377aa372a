"""Load tests on Locust: ``RatatoskrUser``, a simulated participant.

Install with ``.venv/bin/pip install -e ".[locust]"`` in the checkout. Locust monkey-patches
the process for gevent when it is imported; the SDK runs anyway: every client
lives on the blocking client's background event loop, a real OS thread with a
real selector (the originals gevent saved), and a user greenlet waiting for it
waits in the gevent hub, so the hundreds of users of one worker process run
concurrently. See ``docs/load-testing.md``.

::

    from locust import between, task
    from ratatoskr_client.locust import RatatoskrUser

    class Participant(RatatoskrUser):
        wait_time = between(1, 2)

        def on_start(self):
            super().on_start()  # connects
            self.enter_document("doc-1")

        @task
        def react(self):
            self.send_ephemeral("doc-1", {"reaction": "🎉"})

``RatatoskrUser`` is imported (and with it Locust) on first use, so the payload
keys below can be imported without patching the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._probes import ENTERED_AT, SENT_AT

if TYPE_CHECKING:
    from ._user import RatatoskrUser

__all__ = ["ENTERED_AT", "SENT_AT", "RatatoskrUser"]


def __getattr__(name: str) -> Any:
    if name == "RatatoskrUser":
        from ._user import RatatoskrUser

        return RatatoskrUser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
