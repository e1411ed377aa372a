"""Building blocks of the resource-exhaustion tests: hostile CBOR, raw sockets,
and what the operating system says about a process (RSS, open connections).

Everything here is written from the attacker's side: raw bytes and raw TCP,
no SDK code, so a test shows what an outsider can do to the relay.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import strategies as st

# --------------------------------------------------------------------------- CBOR


def head(major: int, length: int) -> bytes:
    """The shortest CBOR head of major type ``major`` with argument ``length``."""
    major <<= 5
    if length < 24:
        return bytes((major | length,))
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if length < 1 << (8 * struct.calcsize(fmt)):
            return bytes((major | extra,)) + struct.pack(fmt, length)
    raise ValueError(length)


def tag(number: int, content: bytes) -> bytes:
    return head(6, number) + content


def text(value: str) -> bytes:
    raw = value.encode()
    return head(3, len(raw)) + raw


def doubling_dag(depth: int) -> bytes:
    """A shared-reference DAG whose expansion doubles at each of ``depth`` levels,
    in a flat array (nesting 2): item 0 is a shareable string, item k a
    shareable pair of references to item k - 1. 25 levels fit in 200 bytes."""
    items = [tag(28, text("x"))]
    for level in range(1, depth + 1):
        ref = tag(29, head(0, level - 1))
        items.append(tag(28, head(4, 2) + ref + ref))
    return head(4, len(items)) + b"".join(items)


def shared_string_fan(string_bytes: int, references: int) -> bytes:
    """One big shareable string and ``references`` references to it: tiny on
    the wire, ``string_bytes * references`` once expanded."""
    return (
        head(4, references + 1)
        + tag(28, text("s" * string_bytes))
        + tag(29, head(0, 0)) * references
    )


def stringref_fan(string_bytes: int, references: int) -> bytes:
    """The same with stringrefs (tag 256 namespace, tag 25 references)."""
    body = head(4, references + 1) + text("s" * string_bytes) + tag(25, head(0, 0)) * references
    return tag(256, body)


def as_frame(**fields: Any) -> bytes:
    return cbor2.dumps(fields)


def frame_with_raw_value(fields: dict[str, Any], key: str, raw_value: bytes) -> bytes:
    """A CBOR map frame whose ``key`` holds ``raw_value`` as already-encoded CBOR."""
    out = head(5, len(fields) + 1)
    for k, v in fields.items():
        out += cbor2.dumps(k) + cbor2.dumps(v)
    return out + cbor2.dumps(key) + raw_value


def tree_size(value: Any, limit: int) -> int:
    """Containers and leaves in ``value``, counting a shared object once per
    place it appears (its cost to whoever walks it); stops past ``limit``."""
    count = 0
    todo = [value]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return count


_INTERESTING_TAGS = [0, 1, 2, 3, 4, 5, 21, 25, 28, 29, 30, 35, 36, 37, 64, 256, 258, 260, 55799]

_leaf = st.one_of(
    st.integers(-(2**64), 2**64 - 1).map(cbor2.dumps),
    st.text(max_size=6).map(text),
    st.binary(max_size=6).map(lambda b: head(2, len(b)) + b),
    st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf9\x3c\x00", b"\xfb" + b"\x00" * 8]),
    # references and stringrefs pointing anywhere, and shareable leaves
    st.integers(0, 8).map(lambda i: tag(29, head(0, i))),
    st.integers(0, 8).map(lambda i: tag(25, head(0, i))),
    st.text(min_size=3, max_size=6).map(lambda s: tag(28, text(s))),
)


def _containers(inner: Any) -> Any:
    items = st.lists(inner, max_size=4)
    return st.one_of(
        items.map(lambda xs: head(4, len(xs)) + b"".join(xs)),
        items.map(lambda xs: b"\x9f" + b"".join(xs) + b"\xff"),  # indefinite array
        # maps with string keys, integer keys, array keys and repeated keys
        st.lists(st.tuples(st.one_of(st.text(max_size=3).map(text), inner), inner), max_size=3).map(
            lambda kv: head(5, len(kv)) + b"".join(k + v for k, v in kv)
        ),
        st.tuples(st.sampled_from(_INTERESTING_TAGS) | st.integers(0, 2**64 - 1), inner).map(
            lambda t: tag(*t)
        ),
        st.tuples(st.integers(20, 120), inner).map(lambda t: b"\x81" * t[0] + t[1]),
    )


#: Well-formed and ill-formed CBOR full of tags, shared references, stringrefs,
#: deep nesting and unusual keys: what a hostile peer or server would send.
hostile_cbor = st.one_of(
    st.recursive(_leaf, _containers, max_leaves=12),
    st.integers(5, 24).map(doubling_dag),
    st.tuples(st.integers(1, 64), st.integers(1, 64)).map(lambda t: shared_string_fan(*t)),
    st.tuples(st.integers(1, 64), st.integers(1, 64)).map(lambda t: stringref_fan(*t)),
    # declared lengths far beyond what follows
    st.sampled_from(
        [
            b"\x9b" + b"\xff" * 8,
            b"\xbb" + b"\x7f" * 8,
            b"\x5b" + b"\x10" * 8,
            b"\x7a\xff\xff\xff\xff",
        ]
    ),
)

# --------------------------------------------------------------------------- raw sockets


def upgrade_request(port: int, path: str = "/sync") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client-to-server WebSocket frame (mask of zeros: payload as is)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack(">H", n)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack(">Q", n)
    return header + b"\x00\x00\x00\x00" + payload


async def open_upgraded(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection with its WebSocket upgrade done (101 read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port))
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def read_frames(reader: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Every server frame until the connection ends: (opcode, payload)."""
    frames = []
    while True:
        try:
            first, second = await reader.readexactly(2)
        except (asyncio.IncompleteReadError, ConnectionError):
            return frames
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await reader.readexactly(8))
        try:
            frames.append((first & 0x0F, await reader.readexactly(n)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return frames


# --------------------------------------------------------------------------- the OS's view


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def reset_peak_rss() -> bool:
    """Make this process's peak RSS (``VmHWM``) its current RSS, so that
    :func:`peak_rss_mib` shows the peak of what runs from now on. False where
    the kernel does not allow it (then the peak is the whole process's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """This process's peak resident set size since :func:`reset_peak_rss`, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def established(port: int) -> int:
    """TCP connections in state ESTABLISHED (or closing on our side) whose local
    port is ``port``, from the kernel's tables (Linux)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            # 01 ESTABLISHED, 08 CLOSE_WAIT (peer closed, we have not)
            if local_port == port and fields[3] in ("01", "08"):
                count += 1
    return count


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def eventually(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``cond()`` holds, re-checking the OS's view every 50 ms (there is
    no event to wait on for another process's sockets). Seconds it took."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
