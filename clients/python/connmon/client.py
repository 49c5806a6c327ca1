"""connmon pool-controller client (NDJSON v1 over connmon's Unix socket), stdlib only.

Synchronous::

    from connmon_client import Client
    with Client() as c:                       # /run/connmon/connmon.sock
        c.subscribe(types=["evict", "reinstate"], roles=["proxy"])
        for event in c.events():              # blocks; yields dicts
            print(event["type"], event["dst"])

asyncio::

    async with AsyncClient() as c:
        await c.subscribe(types=["evict", "reinstate"])
        async for event in c.events():
            ...

Commands: ``ping``, ``snapshot``, ``pool_list``, ``pool_add``, ``pool_remove``,
``pool_replace``, ``evict(dst, for_ms=None)``, ``reinstate(dst)``. An ``error`` reply
raises :class:`ConnmonError` (``.code``: ``forbidden``, ``invalid_argument``, ...).
Events that arrive while a command waits for its reply are kept and yielded later.
A ``{"type":"lagged","missed":N}`` is yielded like an event (you missed N messages);
``{"type":"bye"}`` ends the iteration (the agent shut down).

This file is both ``connmon.client`` in the ``connmon`` package and, standing alone,
``connmon_client.py`` (the same file): copy it next to your code if you prefer not to
install the package.

Also a small command-line tool: ``python3 connmon_client.py [--socket PATH] CMD [ARGS]``
with CMD one of hello, ping, snapshot, watch [TYPES], evict DST [FOR_MS], reinstate DST,
pool list|add|remove|replace [MEMBERS...]; it prints one JSON object per line and exits
with status 1 (message on stderr) on an error reply.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import socket
import sys
from typing import Any, AsyncIterator, Dict, Iterable, Iterator, List, Optional, Tuple

Message = Dict[str, Any]
"""One decoded NDJSON line from the agent."""

DEFAULT_SOCKET = "/run/connmon/connmon.sock"
PROTOCOL_VERSION = 1


class ConnmonError(Exception):
    """An ``error`` reply from the agent, or a connection problem (code ``connection``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _connection_error(path: str, err: OSError) -> ConnmonError:
    if isinstance(err, (FileNotFoundError, ConnectionRefusedError)):
        return ConnmonError("connection", f"cannot connect to {path}: no agent is running (start one with connmon run)")
    if isinstance(err, PermissionError):
        return ConnmonError("connection", f"cannot connect to {path}: permission denied (run as root or as a member of agent.socket_group)")
    return ConnmonError("connection", f"cannot connect to {path}: {err}")


def _decode(line: bytes) -> Optional[Message]:
    """One line from the agent; None at the end of the stream."""
    return json.loads(line) if line else None


def _check_hello(hello: Optional[Message]) -> Message:
    if hello is None:
        raise ConnmonError("connection", "the agent closed the connection")
    if hello.get("type") == "error":
        raise ConnmonError(hello.get("code", "unknown"), hello.get("message", ""))
    if hello.get("type") != "hello" or hello.get("v") != PROTOCOL_VERSION:
        raise ConnmonError("protocol", f"unexpected greeting {hello!r}")
    return hello


class _Commands:
    """The commands and the message handling, written once for both clients: ``_call``
    (and the I/O around these helpers) is sync or async."""

    _call: Any

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._pending: collections.deque[Message] = collections.deque()
        self.closed_by_agent = False

    def _numbered(self, cmd: Message) -> Tuple[int, bytes]:
        """``cmd`` with the next id: the id and the line to send."""
        cmd = dict(cmd, id=next(self._ids))
        return cmd["id"], json.dumps(cmd).encode() + b"\n"

    def _reply_to(self, cmd_id: int, msg: Optional[Message]) -> Optional[Message]:
        """``msg`` if it is the reply to command ``cmd_id`` (an ``error`` reply raises);
        None for any other message, which is kept for ``events()``."""
        if msg is None:
            raise ConnmonError("connection", "the agent closed the connection")
        if msg.get("id") != cmd_id:
            self._pending.append(msg)
            return None
        if msg.get("type") == "error":
            raise ConnmonError(str(msg.get("code")), str(msg.get("message")))
        return msg

    def _event(self, msg: Optional[Message]) -> Optional[Message]:
        """``msg`` as an event, or None where the events end (closed, or ``bye``)."""
        if msg is not None and msg.get("type") == "bye":
            self.closed_by_agent = True
            return None
        return msg

    def ping(self) -> Any:
        return self._call({"cmd": "ping"})

    def snapshot(self) -> Any:
        return self._call({"cmd": "snapshot"})

    def subscribe(self, types: Optional[Iterable[str]] = None, roles: Optional[Iterable[str]] = None) -> Any:
        cmd: Message = {"cmd": "subscribe"}
        if types is not None:
            cmd["types"] = list(types)
        if roles is not None:
            cmd["roles"] = list(roles)
        return self._call(cmd)

    def pool_list(self) -> Any:
        return self._call({"cmd": "pool", "op": "list"})

    def pool_add(self, members: Iterable[str]) -> Any:
        return self._call({"cmd": "pool", "op": "add", "members": list(members)})

    def pool_remove(self, members: Iterable[str]) -> Any:
        return self._call({"cmd": "pool", "op": "remove", "members": list(members)})

    def pool_replace(self, members: Iterable[str]) -> Any:
        return self._call({"cmd": "pool", "op": "replace", "members": list(members)})

    def evict(self, dst: str, for_ms: Optional[int] = None) -> Any:
        cmd: Message = {"cmd": "evict", "dst": dst}
        if for_ms is not None:
            cmd["for_ms"] = int(for_ms)
        return self._call(cmd)

    def reinstate(self, dst: str) -> Any:
        return self._call({"cmd": "reinstate", "dst": dst})


class Client(_Commands):
    """A blocking connection. ``hello`` holds the agent's greeting."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: Optional[float] = None) -> None:
        super().__init__(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except OSError as err:
            self._sock.close()
            raise _connection_error(path, err) from None
        self._file = self._sock.makefile("rb")
        self.hello = _check_hello(self._read())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def shutdown(self) -> None:
        """Unblocks a reader in another thread (its ``events()`` ends); then ``close()``."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read(self) -> Optional[Message]:
        return _decode(self._file.readline())

    def _call(self, cmd: Message) -> Message:
        cmd_id, line = self._numbered(cmd)
        self._sock.sendall(line)
        reply = None
        while reply is None:
            reply = self._reply_to(cmd_id, self._read())
        return reply

    def events(self) -> Iterator[Message]:
        """Yields subscribed events (and ``lagged`` notices) until the agent says bye."""
        while (msg := self._event(self._pending.popleft() if self._pending else self._read())) is not None:
            yield msg

    def __iter__(self) -> Iterator[Message]:
        return self.events()


class AsyncClient(_Commands):
    """An asyncio connection: ``client = await AsyncClient.connect(path)`` or
    ``async with AsyncClient(path) as client``."""

    def __init__(self, path: str = DEFAULT_SOCKET) -> None:
        super().__init__(path)
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self.hello: Optional[Message] = None

    @classmethod
    async def connect(cls, path: str = DEFAULT_SOCKET) -> AsyncClient:
        client = cls(path)
        await client._open()
        return client

    async def _open(self) -> None:
        try:
            # The limit must hold the longest line the agent sends (a large snapshot).
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=16 * 1024 * 1024)
        except OSError as err:
            raise _connection_error(self.path, err) from None
        self.hello = _check_hello(await self._read())

    async def __aenter__(self) -> AsyncClient:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass

    async def _read(self) -> Optional[Message]:
        assert self._reader is not None, "not connected"
        return _decode(await self._reader.readline())

    async def _call(self, cmd: Message) -> Message:
        assert self._writer is not None, "not connected"
        cmd_id, line = self._numbered(cmd)
        self._writer.write(line)
        await self._writer.drain()
        reply = None
        while reply is None:
            reply = self._reply_to(cmd_id, await self._read())
        return reply

    async def events(self) -> AsyncIterator[Message]:
        """Yields subscribed events (and ``lagged`` notices) until the agent says bye."""
        while (msg := self._event(self._pending.popleft() if self._pending else await self._read())) is not None:
            yield msg


def _main(argv: List[str]) -> int:
    path = DEFAULT_SOCKET
    if len(argv) >= 2 and argv[0] == "--socket":
        path, argv = argv[1], argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        with Client(path) as c:
            if cmd == "hello":
                out = [c.hello]
            elif cmd == "ping":
                out = [c.ping()]
            elif cmd == "snapshot":
                out = [c.snapshot()]
            elif cmd == "evict":
                out = [c.evict(args[0], int(args[1]) if len(args) > 1 else None)]
            elif cmd == "reinstate":
                out = [c.reinstate(args[0])]
            elif cmd == "pool":
                if args[0] == "list":
                    out = [c.pool_list()]
                else:
                    op = {"add": c.pool_add, "remove": c.pool_remove, "replace": c.pool_replace}[args[0]]
                    out = [op(args[1:])]
            elif cmd == "watch":
                print(json.dumps(c.subscribe(types=args[0].split(",") if args else None)), flush=True)
                for event in c.events():
                    print(json.dumps(event), flush=True)
                out = [{"type": "bye"}] if c.closed_by_agent else []
            else:
                print(f"connmon_client: unknown command {cmd!r}", file=sys.stderr)
                return 2
    except ConnmonError as err:
        print(f"connmon_client: error: {err}", file=sys.stderr)
        return 1
    for obj in out:
        print(json.dumps(obj), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(130)
