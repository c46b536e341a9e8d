"""A TCP proxy a test controls, to put faults between a process and a service (PostgreSQL, Redis).

    with TcpProxy("127.0.0.1", 5432) as proxy:     # listens on a free port of 127.0.0.1
        url = ...proxy.port...                     # point the processes under test at it
        proxy.cut()                                # live connections reset (RST), new ones refused
        proxy.restore()                            # the same port forwards again
        proxy.delay(0.5)                           # every chunk forwarded 0.5 s late

Everything runs on one asyncio loop in a background thread, so no socket is closed under another
thread's feet; the public methods wait until the loop has applied them. Leaving the block resets
every connection and stops the loop.
"""

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Mode = Literal["refuse", "blackhole"]
_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's and the target's transports, and the task pumping them."""

    task: asyncio.Task[None]
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    cut: bool = False  # reset by the proxy: nothing more is forwarded
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends a blackholed link's wait

    def reset(self) -> None:
        self.cut = True
        for transport in self.transports:
            _reset(transport)
        self.released.set()


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close with RST, not FIN: SO_LINGER 0, then close without flushing."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target_host:target_port` until told otherwise (see module doc)."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self.host = host
        self.port = port  # 0 until started: a free port is chosen then, and kept across restore()
        self.accepted = 0  # connections accepted, in any state
        self.resets = 0  # connections this proxy closed with RST (cut, blackholed, stop)
        self._mode: Mode | None = None  # None: forwarding
        self._delay = 0.0
        self._links: set[_Link] = set()
        self._held: set[_Link] = set()  # blackholed: accepted, never forwarded
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- the test's side ------------------------------------------------------------------------

    def __enter__(self) -> "TcpProxy":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start listening (on a free port unless one was given) and forwarding."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"tcp-proxy-{self.target}", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Reset every connection, close the listener, stop the loop. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    def cut(self, new: Mode = "refuse") -> int:
        """Reset every live connection (RST to both ends); then refuse new connections (the port is
        closed: ECONNREFUSED) or, with new="blackhole", accept them and never answer. Returns how
        many live connections were reset."""
        return self._call(self._cut(new))

    def restore(self) -> None:
        """Forward again, on the same port; blackholed connections are reset (their clients gave up)."""
        self._call(self._restore())

    def delay(self, seconds: float) -> None:
        """Forward every chunk `seconds` late, both ways (0: no delay)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._delay = seconds

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    @property
    def live(self) -> int:
        """Connections being forwarded now."""
        return self._call(self._count())

    def url_netloc(self) -> str:
        """`host:port` of the proxy, to put into a service URL."""
        return f"{self.host}:{self.port}"

    # -- the loop's side ------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _count(self) -> int:
        return len(self._links)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _cut(self, new: Mode) -> int:
        self._mode = new
        if new == "refuse":
            await self._close_listener()
        count = len(self._links)
        await self._reset_all(self._links)
        return count

    async def _restore(self) -> None:
        self._mode = None
        await self._reset_all(self._held)
        if self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        self._mode = "refuse"
        await self._close_listener()
        await self._reset_all(self._links | self._held)

    async def _reset_all(self, links: set[_Link]) -> None:
        doomed = list(links)
        for link in doomed:
            link.reset()
            self.resets += 1
        # Their pumps see the end of their streams and return; a task is cancelled only if one
        # does not (asyncio's stream callback logs a cancelled handler as an error).
        if doomed:
            _done, stuck = await asyncio.wait({link.task for link in doomed}, timeout=5)
            for task in stuck:
                task.cancel()
        for link in doomed:
            links.discard(link)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        link = _Link(task, [client_writer.transport])
        try:
            if self._mode == "blackhole":
                self._held.add(link)
                await link.released.wait()  # until restore() or stop() resets it
                return
            if self._mode is not None:  # accepted just as the listener closed
                link.reset()
                return
            self._links.add(link)
            try:
                target_reader, target_writer = await asyncio.open_connection(*self.target)
            except OSError:
                link.reset()
                return
            link.transports.append(target_writer.transport)
            if link.cut or self._mode is not None:  # cut while connecting
                link.reset()
                return
            await asyncio.gather(
                self._pump(link, client_reader, target_writer), self._pump(link, target_reader, client_writer)
            )
            for transport in link.transports:
                transport.close()
        finally:
            self._links.discard(link)
            self._held.discard(link)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction until EOF (passed on as EOF); a reset end resets the other end too,
        as a broken path would, which also ends the opposite pump."""
        try:
            while data := await reader.read(_CHUNK):
                if self._delay:
                    await asyncio.sleep(self._delay)
                if link.cut:
                    return
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            link.reset()
