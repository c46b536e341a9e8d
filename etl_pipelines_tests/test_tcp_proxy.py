"""The fault-injection proxy itself, against a local echo server: forward, cut (reset, refuse,
blackhole), restore on the same port, delay, stop. No services; well under a second."""

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from etl_pipelines_tests.harness import free_port
from etl_pipelines_tests.tcp_proxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        # A cut resets the proxy's side of the connection: the echo ends quietly.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while data := self.request.recv(4096):
                self.request.sendall(data)


@pytest.fixture(autouse=True)
def no_loop_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The proxy's loop logs nothing at ERROR (an unhandled exception, a cancelled handler)."""
    yield
    errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelname == "ERROR"]
    assert not errors, errors


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on a free port of 127.0.0.1."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: int) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo) as proxy:
        yield proxy


def connect(proxy: TcpProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def round_trip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_both_ways_and_stops_listening_when_left(echo: int) -> None:
    with TcpProxy("127.0.0.1", echo) as proxy:
        port = proxy.port
        with connect(proxy) as a, connect(proxy) as b:
            assert round_trip(a, b"hello") == b"hello"
            assert round_trip(b, b"x" * 200_000) == b"x" * 200_000
            assert proxy.live == 2
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_cut_resets_live_connections_refuses_new_ones_and_restore_reopens_the_port(proxy: TcpProxy) -> None:
    port = proxy.port
    with connect(proxy) as live:
        assert round_trip(live) == b"ping"
        assert proxy.cut() == 1
        assert proxy.is_cut and proxy.live == 0
        with pytest.raises(ConnectionResetError):  # RST, not an orderly FIN (recv would give b"")
            live.recv(4096)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.restore()
    assert not proxy.is_cut and proxy.port == port
    with connect(proxy) as again:
        assert round_trip(again) == b"ping"


def test_blackhole_accepts_and_never_answers_until_restore_resets_it(proxy: TcpProxy) -> None:
    proxy.cut(new="blackhole")
    with connect(proxy, timeout=0.3) as held:
        held.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            held.recv(4096)
        held.settimeout(5)
        proxy.restore()
        with pytest.raises(ConnectionResetError):
            held.recv(4096)
    with connect(proxy) as again:
        assert round_trip(again) == b"ping"


def test_delay_holds_each_chunk_back(proxy: TcpProxy) -> None:
    proxy.delay(0.5)
    with connect(proxy, timeout=0.1) as sock:
        sock.sendall(b"slow")
        with pytest.raises(TimeoutError):  # not there at once...
            sock.recv(4096)
        sock.settimeout(5)
        assert sock.recv(4096) == b"slow"  # ...but there
    proxy.delay(0)
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"


def test_an_unreachable_target_resets_the_client() -> None:
    with (
        TcpProxy("127.0.0.1", free_port()) as proxy,
        connect(proxy) as sock,
        pytest.raises(ConnectionResetError),
    ):
        sock.recv(4096)
