"""The relay on aiohttp: the thin I/O layer over :class:`~ratatoskr_client.server.core.RelayCore`.

:mod:`.app` serves ``/sync`` (and ``/health``, ``/metrics``) and feeds each
connection's frames to the core; :mod:`.outbox` writes the core's frames to the
sockets; :mod:`.guard` enforces the handshake deadline; :mod:`.runner`
(:class:`~ratatoskr_client.server.RelayServer`) runs it in a program or a test;
:mod:`.workers` runs several relay processes on one port; :mod:`.metrics` renders
``/metrics``; :mod:`.memory` decides when freed memory goes back to the OS.
"""
