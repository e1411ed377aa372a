"""The ``ratatoskr`` command: ``relay``, ``demo``, ``watch``, ``webhook-echo`` and ``token``.

Every subcommand returns an exit status: 0 on success, 1 on a runtime failure
(unreachable server, refused auth, ...), 2 on bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .._version import __version__, install_hint
from ..errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("ratatoskr_client.cli.main")

#: The environment variable ``ratatoskr relay`` reads the metrics token from
#: (``--metrics-token-file`` wins over it, and it over the config file's).
METRICS_TOKEN_ENV = "RATATOSKR_METRICS_TOKEN"
#: The environment variable ``ratatoskr relay`` reads the admin token from
#: (``--admin-token`` and ``--admin-token-file`` win over it, and it over the
#: config file's).
ADMIN_TOKEN_ENV = "RATATOSKR_ADMIN_TOKEN"
#: The environment variable holding the webhook signing secret
#: (``--webhook-secret-file`` wins over it, and it over the config file's).
WEBHOOK_SECRET_ENV = "RATATOSKR_WEBHOOK_SECRET"


def _number(
    kind: Callable[[str], float], noun: str, check: Callable[[float], bool], rule: str
) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses with ``kind`` and enforces ``check``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


_positive_float = _number(float, "a number", lambda v: v > 0, "> 0")
_positive_int = _number(int, "an integer", lambda v: v >= 1, ">= 1")
_port = _number(int, "a port number", lambda v: 0 <= v <= 65535, "0-65535")


def _non_empty(text: str) -> str:
    """An argparse ``type=`` refusing the empty string (``--token ""``, ``""`` as DOC_ID)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _global_options(*, defaults: bool) -> argparse.ArgumentParser:
    """The options every command accepts, before or after the command's name.

    The top-level parser holds the defaults; each subcommand's copy uses
    ``SUPPRESS`` so that, when the option is not repeated after the command, the
    subcommand does not overwrite the value parsed before it.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--version", action="version", version=f"ratatoskr {__version__}")
    options.add_argument(
        "--log-level",
        default="WARNING" if defaults else argparse.SUPPRESS,
        type=str.upper,  # --log-level debug works too
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr, in any case (default: WARNING)",
    )
    return options


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratatoskr",
        description="Presence and ephemeral messaging for Ratatoskr servers.",
        parents=[_global_options(defaults=True)],
    )
    common = _global_options(defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    relay = sub.add_parser(
        "relay",
        parents=[common],
        help="run the reference relay server",
        description="Run the reference relay. Prints one line once listening: "
        "'ratatoskr relay listening on ws://HOST:PORT/sync'. SIGINT/SIGTERM stop it.",
    )
    relay.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    relay.add_argument("--port", type=_port, default=4151, help="port; 0 picks a free one (4151)")
    relay.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with users and documents; without it the relay runs in open mode",
    )
    relay.add_argument(
        "--presence-ttl",
        type=_positive_float,
        metavar="SECONDS",
        help="remove a peer from a document after this long without heartbeat (90)",
    )
    relay.add_argument(
        "--rate-limit",
        type=_positive_int,
        metavar="PER_MINUTE",
        help="relayed ephemeral messages per minute per connection (600)",
    )
    relay.add_argument(
        "--identity-scope",
        choices=["document", "global"],
        help="who receives a peer's identity: the peers sharing a document with it "
        "(document, the default) or every connected peer (global)",
    )
    relay.add_argument(
        "--anonymous-connection-limit",
        type=_positive_int,
        metavar="PER_MINUTE",
        help="anonymous connections per minute per source address; loopback is exempt (60)",
    )
    relay.add_argument(
        "--upstream-compat",
        action="store_true",
        help="behave like today's upstream Ratatoskr server: no 'features', no identity "
        "or presence frames (to test clients' peer-to-peer presence fallback)",
    )
    relay.add_argument(
        "--uvloop",
        action="store_true",
        help="run on uvloop, a faster event loop (needs the 'speed' extra: "
        f"{install_hint('speed')})",
    )
    relay.add_argument(
        "--redis",
        metavar="URL",
        help="join the relay cluster on this Redis server (redis://HOST:PORT/DB; needs "
        f"the 'cluster' extra: {install_hint('cluster')})",
    )
    relay.add_argument(
        "--node-ttl",
        type=_number(float, "a number", lambda v: v >= 1, ">= 1"),
        metavar="SECONDS",
        help="with --redis: the other relays remove this one's peers this long after it stops (10)",
    )
    relay.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="with --redis, on Linux: run N relay processes on the same port "
        "(SO_REUSEPORT), one per core",
    )
    relay.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics (and /health) on this address instead of the main one, "
        "e.g. 127.0.0.1:9464; with --workers N, worker i listens on PORT+i",
    )
    relay.add_argument(
        "--metrics-token-file",
        metavar="FILE",
        help="GET /metrics needs 'Authorization: Bearer <token>', the token being this "
        f"file's content (or set {METRICS_TOKEN_ENV}; never pass a secret on the command line)",
    )
    admin = relay.add_mutually_exclusive_group()
    admin.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="serve the admin API and the dashboard at /admin/, for this token "
        "(visible to local users in the process list: on a shared machine prefer "
        f"--admin-token-file or {ADMIN_TOKEN_ENV})",
    )
    admin.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="the same, the token being this file's content",
    )
    relay.add_argument(
        "--webhook-url",
        metavar="URL",
        help="POST signed batches of presence events (document occupied/vacated, user "
        "joined/left) to this URL; needs --webhook-secret-file or "
        f"{WEBHOOK_SECRET_ENV}",
    )
    relay.add_argument(
        "--webhook-secret-file",
        metavar="FILE",
        help="the webhooks' HMAC-SHA256 signing secret is this file's content",
    )
    relay.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    relay.set_defaults(func=_cmd_relay, command_parser=relay)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="watch bots use presence on an embedded relay",
        description="Start a relay in-process, connect bot clients that enter and leave "
        "documents, move cursors, react and chat, and show it live.",
    )
    demo.add_argument("--bots", type=_positive_int, default=6, help="bot clients (default: 6)")
    demo.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="exit 0 after this long (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "--web",
        action="store_true",
        help="serve the relay's live dashboard and print its address (with a token "
        "made for this run) instead of the terminal view",
    )
    demo.set_defaults(func=_cmd_demo, command_parser=demo)

    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="show the live presence of a document on any server",
        description="Enter DOC_ID on the server at URL and show who is present as it "
        "changes. Exits 1 on auth failure, permission denied or an unreachable server.",
    )
    watch.add_argument("url", metavar="URL", help="server URL, e.g. http://localhost:4151")
    watch.add_argument("document", type=_non_empty, metavar="DOC_ID", help="document to watch")
    watch.add_argument(
        "--token", type=_non_empty, help="authenticate with this token (default: anonymous)"
    )
    watch.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per presence change instead of the live view",
    )
    watch.set_defaults(func=_cmd_watch, command_parser=watch)

    echo = sub.add_parser(
        "webhook-echo",
        parents=[common],
        help="receive the relay's webhooks and print each verified event",
        description="Listen for the relay's webhook POSTs, check their signatures and "
        "timestamps, print one JSON line per event (stdout); refused requests are "
        f"reported on stderr. The secret comes from --secret-file or {WEBHOOK_SECRET_ENV}.",
    )
    echo.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    echo.add_argument("--port", type=_port, default=8787, help="port; 0 picks a free one (8787)")
    echo.add_argument("--secret-file", metavar="FILE", help="the webhooks' signing secret")
    echo.set_defaults(func=_cmd_webhook_echo, command_parser=echo)

    token = sub.add_parser(
        "token",
        parents=[common],
        help="mint a session token or a JWT for a user (development and tests)",
        description="Print a token for USER_ID signed with the secret in --secret-file "
        "(or the environment variable --secret-env): by default an upstream Ratatoskr "
        "session token (what upstream's createSessionToken makes, for its JWT_SECRET); "
        "with --jwt an HS256 JWT. For development and tests: a real deployment's "
        "identity provider issues its tokens.",
    )
    token.add_argument("user", type=_non_empty, metavar="USER_ID", help="the token's user (sub)")
    secret = token.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret-file", metavar="FILE", help="file holding the secret")
    secret.add_argument("--secret-env", metavar="VAR", help="environment variable holding it")
    token.add_argument(
        "--lifetime",
        type=_positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds until the token expires (default: 3600, upstream's)",
    )
    token.add_argument("--jwt", action="store_true", help="mint an HS256 JWT instead")
    token.add_argument("--name", type=_non_empty, help="JWT only: the 'name' claim")
    token.add_argument("--issuer", type=_non_empty, help="JWT only: the 'iss' claim")
    token.add_argument("--audience", type=_non_empty, help="JWT only: the 'aud' claim")
    token.set_defaults(func=_cmd_token, command_parser=token)
    return parser


def _run_until_signal(
    make: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run ``make(stop)`` on a fresh event loop (from ``loop_factory``, default
    asyncio's); SIGINT/SIGTERM set ``stop``."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await make(stop)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
            return loop_runner.run(runner())
    except KeyboardInterrupt:  # a platform without add_signal_handler
        return 0


# --------------------------------------------------------------------------- relay


def _cmd_relay(args: argparse.Namespace) -> int:
    from ..server import RelayConfig, RelayServer, load_config
    from ..server.asyncio.guard import raise_open_file_limit
    from ..server.asyncio.runner import OPEN_MODE

    overrides: dict[str, Any] = {"host": args.host, "port": args.port}
    # Secrets from a file or the environment, never from the command line.
    for flag, path, env, key in (
        ("--metrics-token-file", args.metrics_token_file, METRICS_TOKEN_ENV, "metrics_token"),
        ("--admin-token-file", args.admin_token_file, ADMIN_TOKEN_ENV, "admin_token"),
        ("--webhook-secret-file", args.webhook_secret_file, WEBHOOK_SECRET_ENV, "webhook_secret"),
    ):
        try:
            secret = _secret(path, env)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"ratatoskr relay: cannot read {flag} {path}: {reason}", file=sys.stderr)
            return 2
        if secret is not None:
            overrides[key] = secret
    # Flags left out (None) leave the config file's setting, or the default;
    # --admin-token wins over RATATOSKR_ADMIN_TOKEN (so it comes after).
    for key, value in (
        ("presence_ttl", args.presence_ttl),
        ("rate_limit", args.rate_limit),
        ("identity_scope", args.identity_scope),
        ("anonymous_connection_limit", args.anonymous_connection_limit),
        ("server_presence", False if args.upstream_compat else None),
        ("redis_url", args.redis),
        ("node_ttl", args.node_ttl),
        ("reuse_port", True if args.reuse_port else None),
        ("metrics_listen", args.metrics_listen),
        ("admin_token", args.admin_token),
        ("webhook_url", args.webhook_url),
    ):
        if value is not None:
            overrides[key] = value
    try:
        if args.config:
            config = load_config(args.config, **overrides)
        else:
            config = RelayConfig(open=True, **overrides)
    except ConfigError as exc:
        print(f"ratatoskr relay: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if config.redis_url is not None:
        from ..server.cluster import require_redis

        try:
            require_redis()
        except ConfigError as exc:
            print(f"ratatoskr relay: {exc}", file=sys.stderr)
            return 2
    if args.workers is not None:
        return _relay_workers(args, config)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        try:
            # Imported by name: uvloop is an optional extra ('speed').
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            print(
                f"ratatoskr relay: --uvloop needs uvloop: {install_hint('speed')}",
                file=sys.stderr,
            )
            return 2
        loop_factory = uvloop.new_event_loop

    raised = raise_open_file_limit()
    if raised is not None:
        log.info("open-file limit raised from %d to %d", *raised)

    async def serve(stop: asyncio.Event) -> int:
        relay = RelayServer(config)
        try:
            await relay.start()
        except ConfigError as exc:
            print(f"ratatoskr relay: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            # (exc.filename names the metrics address when that one failed)
            where = exc.filename or f"{config.host}:{config.port}"
            print(
                f"ratatoskr relay: cannot listen on {where}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        if config.open:  # (an in-process RelayServer only logs this at INFO)
            logging.getLogger("ratatoskr_client.server").warning(OPEN_MODE)
        try:
            print(f"ratatoskr relay listening on {relay.ws_url}", flush=True)
            if config.admin_token is not None:
                # (stderr: stdout's one line is the contract scripts rely on)
                print(f"ratatoskr relay dashboard at {relay.url}/admin/", file=sys.stderr)
            await stop.wait()
        finally:
            await relay.stop()
        return 0

    return _run_until_signal(serve, loop_factory)


def _secret(path: str | None, env: str) -> str | None:
    """A secret: the file's content (surrounding whitespace removed), else
    the environment variable's, else None (the config file's applies).

    Raises:
        OSError: the file cannot be read.
    """
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    value = os.environ.get(env)
    return value.strip() if value else None


def _relay_workers(args: argparse.Namespace, config: Any) -> int:
    """``relay --workers N``: N relay processes on one port (see server/workers.py)."""
    from ..server.asyncio.workers import reserve_port, reuse_port_supported, supervise

    if config.redis_url is None:
        print(
            "ratatoskr relay: --workers needs --redis: the workers share presence through Redis",
            file=sys.stderr,
        )
        return 2
    if not reuse_port_supported():
        print("ratatoskr relay: --workers needs Linux (SO_REUSEPORT)", file=sys.stderr)
        return 2
    try:
        reserved = reserve_port(config.host, config.port)
    except OSError as exc:
        print(
            f"ratatoskr relay: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    metrics = config.metrics_address
    if metrics is not None and not 0 < metrics[1] <= 65536 - args.workers:
        reserved.close()
        print(
            "ratatoskr relay: --metrics-listen with --workers needs a fixed port with "
            f"room for {args.workers} (worker i serves its metrics on PORT+i)",
            file=sys.stderr,
        )
        return 2
    port = reserved.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    # Each worker gets the same options, the resolved port and --reuse-port.
    forwarded = ["--host", config.host, "--port", str(port), "--reuse-port"]
    for flag, value in (
        ("--config", args.config),
        ("--presence-ttl", args.presence_ttl),
        ("--rate-limit", args.rate_limit),
        ("--identity-scope", args.identity_scope),
        ("--anonymous-connection-limit", args.anonymous_connection_limit),
        ("--redis", args.redis),
        ("--node-ttl", args.node_ttl),
        ("--metrics-token-file", args.metrics_token_file),
        ("--admin-token-file", args.admin_token_file),
        ("--webhook-url", args.webhook_url),
        ("--webhook-secret-file", args.webhook_secret_file),
    ):
        if value is not None:
            forwarded += [flag, str(value)]
    forwarded += [
        f
        for f, on in (("--upstream-compat", args.upstream_compat), ("--uvloop", args.uvloop))
        if on
    ]
    command = [sys.executable, "-m", "ratatoskr_client", "--log-level", args.log_level, "relay"]
    if args.admin_token is not None:
        # To the workers through their environment, never their argv.
        os.environ[ADMIN_TOKEN_ENV] = args.admin_token

    def worker_argv(i: int) -> list[str]:
        if metrics is None:
            return [*command, *forwarded]
        metrics_host = f"[{metrics[0]}]" if ":" in metrics[0] else metrics[0]
        return [*command, *forwarded, "--metrics-listen", f"{metrics_host}:{metrics[1] + i}"]

    return _run_until_signal(
        lambda stop: supervise(
            args.workers,
            worker_argv,
            f"ws://{host}:{port}/sync",
            reserved,
            stop,
        )
    )


# --------------------------------------------------------------------------- demo / watch


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return _run_until_signal(
        lambda stop: run_demo(bots=args.bots, duration=args.duration, stop=stop, web=args.web)
    )


def _cmd_watch(args: argparse.Namespace) -> int:
    from .watch import run_watch

    return _run_until_signal(
        lambda stop: run_watch(
            args.url, args.document, token=args.token, as_json=args.json, stop=stop
        )
    )


def _unrecognized(unknown: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments" message, with the nearest option of
    ``parser`` for each unknown one (``--prot`` → ``--port``). Python 3.14's
    ``suggest_on_error`` does this for choices only, and only there."""
    known = [
        option
        for action in parser._actions  # (argparse has no public list of options)
        if action.help is not argparse.SUPPRESS
        for option in action.option_strings
    ]
    guesses: list[str] = []
    for word in unknown:
        if not word.startswith("-"):
            continue
        close = difflib.get_close_matches(word.partition("=")[0], known, n=1, cutoff=0.6)
        if close and close[0] not in guesses:
            guesses.append(close[0])
    message = f"unrecognized arguments: {' '.join(unknown)}"
    if guesses:
        message += f" (did you mean {' or '.join(guesses)}?)"
    return message


def _cmd_webhook_echo(args: argparse.Namespace) -> int:
    from .webhook_echo import run_webhook_echo

    try:
        secret = _secret(args.secret_file, WEBHOOK_SECRET_ENV)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(
            f"ratatoskr webhook-echo: cannot read --secret-file {args.secret_file}: {reason}",
            file=sys.stderr,
        )
        return 2
    if not secret:
        print(
            f"ratatoskr webhook-echo: needs the secret: --secret-file FILE or {WEBHOOK_SECRET_ENV}",
            file=sys.stderr,
        )
        return 2
    return _run_until_signal(lambda stop: run_webhook_echo(args.host, args.port, secret, stop))


def _cmd_token(args: argparse.Namespace) -> int:
    import time

    from ..protocol.tokens import mint_session_token
    from ..server.config.identity import read_secret

    try:
        secret = read_secret(
            args.secret_file, args.secret_env, what="secret", source=None, entry="token"
        )
    except ConfigError as exc:
        print(f"ratatoskr token: {exc.problem}", file=sys.stderr)
        return 2
    now = time.time()
    if not args.jwt:
        if args.name or args.issuer or args.audience:
            print("ratatoskr token: --name, --issuer and --audience need --jwt", file=sys.stderr)
            return 2
        print(mint_session_token(args.user, secret, lifetime=args.lifetime, now=now))
        return 0
    try:
        import jwt
    except ImportError:
        print(
            f"ratatoskr token: --jwt needs PyJWT: {install_hint('jwt')}",
            file=sys.stderr,
        )
        return 2
    claims: dict[str, Any] = {"sub": args.user, "iat": int(now), "exp": int(now + args.lifetime)}
    for claim, value in (("name", args.name), ("iss", args.issuer), ("aud", args.audience)):
        if value is not None:
            claims[claim] = value
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ratatoskr`` command. Returns the exit status.

    ``argv`` defaults to ``sys.argv[1:]``. Bad usage returns 2 (argparse's usage
    and error message are on stderr), ``--help`` and ``--version`` return 0.
    """
    parser = _build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            # argparse would blame the top-level parser and print its usage; the
            # mistake is in the command's options, so show those, and the option
            # that was probably meant.
            command_parser = getattr(args, "command_parser", parser)
            command_parser.error(_unrecognized(unknown, command_parser))
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result
