"""Every exception ratatoskr-client raises, rooted at :class:`RatatoskrError`.

Catch :class:`RatatoskrError` to handle anything this package raises. Errors from
the libraries underneath (aiohttp, ``OSError``, cbor2) never escape the public API
untranslated: they are re-raised as one of the types below, with the original
exception chained as ``__cause__``.

The tree::

    RatatoskrError
    ├── ProtocolError           a frame or payload that breaks the wire contract
    ├── PayloadError            (also ValueError) a payload we refuse to send
    ├── TransportError          the network connection itself
    │   ├── ConnectError        could not open the WebSocket (DNS, refused, TLS, HTTP)
    │   └── ConnectionClosed    the connection is gone, or the client was closed
    │       └── DisconnectedByAdmin   the relay's operator closed it (``.reason``, ``.reconnect``)
    ├── ServerError             the server answered with an error frame (``.code``)
    │   ├── AuthError           credentials refused, or no auth in time; never retried
    │   │                       (but an ``invalid_token`` from a ``token`` callable is)
    │   ├── PermissionDenied    no read permission on ``.document_id``
    │   │   └── PermissionRevoked   the permission was revoked after entering
    │   ├── TokenExpired        the token expired; renew within ``.retry_after`` seconds
    │   ├── DocumentNotFound    the server does not know ``.document_id``
    │   ├── RateLimited         too many messages; retry after ``.retry_after`` seconds
    │   └── LimitExceeded       a per-connection bound (documents, sessions) was hit
    ├── OperationTimeout        (also TimeoutError) the server did not answer in time
    ├── PresenceUnsupported     the server has no server-side presence (``enter_document``)
    ├── CallbackError           an application callback raised (``.event``)
    ├── TokenRefreshError       the ``token`` callable raised or returned no token
    └── ConfigError             the relay configuration is invalid (file, entry, problem)

:func:`error_from_frame` maps a server error frame's ``error`` code to its class;
unknown codes become a plain :class:`ServerError`, so new server codes never crash
an old client.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CallbackError",
    "ConfigError",
    "ConnectError",
    "ConnectionClosed",
    "DisconnectedByAdmin",
    "DocumentNotFound",
    "LimitExceeded",
    "OperationTimeout",
    "PayloadError",
    "PermissionDenied",
    "PermissionRevoked",
    "PresenceUnsupported",
    "ProtocolError",
    "RatatoskrError",
    "RateLimited",
    "ServerError",
    "TokenExpired",
    "TokenRefreshError",
    "TransportError",
    "error_from_frame",
]

#: The longest pause a server's ``retryAfter`` can impose, in seconds. Rate limits
#: are per minute, so no honest server asks for more; a larger value (a buggy or
#: hostile server) would otherwise stop sending, re-joins and reconnects for good.
_MAX_RETRY_AFTER = 60.0


class RatatoskrError(Exception):
    """Root of every exception raised by ratatoskr-client."""


class ProtocolError(RatatoskrError):
    """A frame or payload does not follow the wire contract (``docs/protocol.md``).

    Raised by :func:`ratatoskr_client.protocol.decode` for any malformed input and
    reported as an ``error`` event by the client when the server sends one.
    """


class PayloadError(RatatoskrError, ValueError):
    """An application payload cannot be sent: not CBOR-encodable, too large, or
    shaped like a presence control message (which the server would swallow)."""


class TransportError(RatatoskrError):
    """Problems with the network connection itself."""


class ConnectError(TransportError):
    """The WebSocket could not be opened: unreachable host, refused connection,
    TLS failure, or an HTTP answer that is not a WebSocket upgrade.

    ``status`` is the HTTP status when the server answered the upgrade request
    with something else (an ordinary web server's 404, a proxy's 502), else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(TransportError):
    """The connection is closed (or the client was closed) so the operation
    cannot complete. ``code`` is the WebSocket close code when one is known."""

    def __init__(self, message: str = "connection closed", *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class DisconnectedByAdmin(ConnectionClosed):
    """The relay's operator closed this connection (the server's error
    ``disconnected_by_admin``, then the close). It is the reason the
    ``disconnected`` event carries, and what pending calls fail with.

    Attributes:
        reason: what the operator said (the error frame's message).
        retry_after: seconds after which the client may reconnect, or None.
        reconnect: False when the operator said not to reconnect (no
            ``retryAfter``): the client then stops for good, like ``close()``,
            whatever its ``reconnect`` option; True: it reconnects as after
            any lost connection, waiting at least ``retry_after``.
    """

    code_name = "disconnected_by_admin"

    def __init__(self, reason: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(f"disconnected by the relay's operator: {reason or 'no reason given'}")
        self.reason = reason
        self.retry_after = retry_after

    @property
    def reconnect(self) -> bool:
        """True when the operator allowed a reconnect (after :attr:`retry_after`)."""
        return self.retry_after is not None


class ServerError(RatatoskrError):
    """The server sent an error frame.

    Attributes:
        code: the frame's ``error`` string (``"invalid_message"``, ...).
        message: the server's human-readable explanation.
        document_id: the document the error is about, when the frame names one.
    """

    def __init__(self, code: str, message: str = "", *, document_id: str | None = None) -> None:
        detail = f"{code}: {message}" if message else code
        if document_id is not None:
            detail = f"{detail} (document {document_id!r})"
        super().__init__(detail)
        self.code = code
        self.message = message
        self.document_id = document_id


class AuthError(ServerError):
    """The server refused to authenticate this connection (``invalid_token``,
    ``missing_credentials``, ``auth_timeout``). ``connect()`` raises it; while
    reconnecting, the client stops for good on the first two and retries after
    ``auth_timeout`` (an overloaded server, not wrong credentials)."""


class PermissionDenied(ServerError):
    """This connection may not read ``document_id``."""


class PermissionRevoked(PermissionDenied):
    """The server revoked this connection's permission on ``document_id``
    after it had entered it (``permission_revoked``): the document is
    ``DocumentState.REFUSED`` until it is left or
    entered again."""


class TokenExpired(ServerError):
    """The server says this connection's token expired (``token_expired``):
    it closes the connection after ``retry_after`` seconds unless a fresh
    token for the same user arrives (the client sends one when its ``token``
    is a callable)."""

    def __init__(
        self,
        code: str = "token_expired",
        message: str = "",
        *,
        retry_after: float = 0.0,
        document_id: str | None = None,
    ) -> None:
        super().__init__(code, message, document_id=document_id)
        self.retry_after = retry_after


class TokenRefreshError(RatatoskrError):
    """The ``token`` callable raised (the exception is ``__cause__``) or
    returned something that is not a non-empty string."""


class DocumentNotFound(ServerError):
    """The server does not know ``document_id`` (and it is not an ``eph:`` channel)."""


class RateLimited(ServerError):
    """The server dropped a message because this connection sent too many.

    ``retry_after`` is the number of seconds the server asked us to wait (at most
    60 s).
    """

    def __init__(
        self,
        code: str = "rate_limited",
        message: str = "",
        *,
        retry_after: float = 0.0,
        document_id: str | None = None,
    ) -> None:
        super().__init__(code, message, document_id=document_id)
        self.retry_after = retry_after


class LimitExceeded(ServerError):
    """A per-connection bound was reached, such as the maximum number of
    documents one peer may be present in (``too_many_documents``)."""


class OperationTimeout(RatatoskrError, TimeoutError):
    """The server did not answer within the allotted time. Also a
    ``TimeoutError``, so ``except TimeoutError`` catches it too.

    ``connect()`` raises it both when the server accepts TCP but never completes
    the WebSocket upgrade and when it never answers ``auth``.
    """


class PresenceUnsupported(RatatoskrError):
    """The server announced no server-side presence (no ``"presence"`` in the
    ``features`` of ``auth_ok``, as the upstream server today), so
    :meth:`~ratatoskr_client.RatatoskrClient.enter_document` cannot work there.
    Ephemeral messages still do."""


class CallbackError(RatatoskrError):
    """An application callback raised. The original exception is ``__cause__``;
    ``event`` names the event whose callback failed."""

    def __init__(self, event: str, exc: BaseException) -> None:
        super().__init__(f"callback for {event!r} raised {type(exc).__name__}: {exc}")
        self.event = event
        self.__cause__ = exc


class ConfigError(RatatoskrError):
    """The relay configuration is invalid.

    The message names the file, the entry and the problem, e.g.
    ``relay.toml: documents[1] (id "doc-9"): owner "carol" is not a user``.
    """

    def __init__(self, problem: str, *, path: str | None = None, entry: str | None = None) -> None:
        parts = [p for p in (path, entry) if p]
        super().__init__(": ".join([*parts, problem]))
        self.path = path
        self.entry = entry
        self.problem = problem


_ERROR_CLASSES: dict[str, type[ServerError]] = {
    "invalid_token": AuthError,
    "missing_credentials": AuthError,
    "auth_timeout": AuthError,
    "permission_denied": PermissionDenied,
    "permission_revoked": PermissionRevoked,
    "user_mismatch": AuthError,
    "document_not_found": DocumentNotFound,
    "too_many_documents": LimitExceeded,
    "too_many_sessions": LimitExceeded,
}


def error_from_frame(
    code: str,
    message: str = "",
    *,
    document_id: str | None = None,
    retry_after: float | None = None,
) -> ServerError:
    """Build the typed exception for a server error frame's ``error`` code."""
    if code == "rate_limited":
        retry_after = min(retry_after or 0.0, _MAX_RETRY_AFTER)
        return RateLimited(code, message, retry_after=retry_after, document_id=document_id)
    if code == "token_expired":
        return TokenExpired(code, message, retry_after=retry_after or 0.0, document_id=document_id)
    cls = _ERROR_CLASSES.get(code, ServerError)
    return cls(code, message, document_id=document_id)
