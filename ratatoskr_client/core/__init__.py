"""The client's rules, as a state machine without I/O: the sans-I/O core.

:class:`~ratatoskr_client.core.client.ClientCore` takes what happened (a frame
arrived, the application called ``enter_document``, the time is now ``t``) and
records what must happen in its :class:`~ratatoskr_client.core.outbox.Outbox`:
bytes to send, events to emit, waiters to resolve, when to be called again.
It never calls the application or its driver, and imports neither asyncio
nor aiohttp, so every rule of the client is tested with a fake clock and no
socket (``tests/unit/test_client_core.py``). The drivers that do the I/O sit
above it: :mod:`ratatoskr_client.asyncio` and, on that,
:mod:`ratatoskr_client.sync`. How the parts fit: ``docs/architecture.md``.
"""
