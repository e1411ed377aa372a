"""A blocking client, for code without asyncio: scripts, notebooks, WSGI views, CLIs.

::

    from ratatoskr_client.sync import RatatoskrClient

    with RatatoskrClient("http://localhost:4151") as client:
        peers = client.enter_document("doc-123")  # blocks until confirmed
        client.send_ephemeral("doc-123", {"hello": "world"})

It has the asyncio client's names, arguments, return values, exceptions and
events, and runs that client on one event loop in one background thread per
process, shared by every blocking client: started by the first, stopped when
the last one closes or at interpreter exit. Callbacks run on that thread. See
the "Blocking client" section of ``docs/guide.md``.
"""

from ._watch import PresenceWatch
from .client import RatatoskrClient

__all__ = ["PresenceWatch", "RatatoskrClient"]
