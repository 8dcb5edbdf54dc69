"""A TCP proxy on 127.0.0.1 that can trickle its answers: a server that stays "alive" one byte at a time.

Requests go to the upstream at once; answers come back whole, or, while ``proxy.trickle`` is set, one byte every
``byte_interval_s`` seconds, so no socket read ever waits long enough for a read timeout to fire. It knows nothing
of HTTP: it pipes bytes, so keep-alive connections and several requests per connection just work.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class TricklingProxy:
    """A running proxy: ``endpoint`` (``http://127.0.0.1:PORT``); set ``trickle`` to slow its answers down."""

    endpoint: str
    trickle: bool
    byte_interval_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    answered: int = 0  # bytes sent back to clients


def _pump(src: socket.socket, dst: socket.socket, proxy: TricklingProxy, answers: bool) -> None:
    """Copy ``src`` to ``dst`` until either side closes; answers are trickled while ``proxy.trickle`` is set."""
    with contextlib.suppress(OSError):
        while not proxy.stop.is_set():
            data = src.recv(65536)
            if not data:
                break
            if not (answers and proxy.trickle):
                dst.sendall(data)
                proxy.answered += len(data) if answers else 0
                continue
            for i in range(len(data)):
                if proxy.stop.wait(proxy.byte_interval_s):
                    return
                dst.sendall(data[i : i + 1])
                proxy.answered += 1
    for s in (src, dst):  # one side is gone: end the connection both ways
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def trickling_proxy(upstream: str, trickle: bool = True, byte_interval_s: float = 0.5) -> Iterator[TricklingProxy]:
    """A proxy to ``upstream`` (``http://host:port``) on a free port of 127.0.0.1, stopped on exit."""
    host, port = upstream.removeprefix("http://").rstrip("/").rsplit(":", 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    proxy = TricklingProxy(f"http://127.0.0.1:{listener.getsockname()[1]}", trickle, byte_interval_s)
    conns: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve() -> None:
        while not proxy.stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection((host, int(port)), timeout=10)
            client.settimeout(None)
            server.settimeout(None)
            conns.extend((client, server))
            for src, dst, answers in ((client, server, False), (server, client, True)):
                t = threading.Thread(target=_pump, args=(src, dst, proxy, answers), daemon=True)
                t.start()
                threads.append(t)

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield proxy
    finally:
        proxy.stop.set()
        acceptor.join(5)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in threads:
            t.join(5)
        listener.close()
