"""A TCP proxy in front of a server that breaks a transfer on purpose: once `cut_after` bytes have gone from the
clients to the server, it waits for `release` and then drops every connection (as a Wi-Fi drop or a VPN
reconnect does). It counts the bytes sent toward the server, so a test can tell how much a client sent again.
The target port can change, so a server restarted on another port stays behind the same address."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PIECE = 1 << 16


class CuttingProxy:
    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.sent = 0  # bytes from clients toward the server, all connections
        self.cuts = 0
        self.reached = threading.Event()  # set when cut_after bytes have passed (the cut waits for release)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                downstream.close()  # the server is down: the client sees a refused-like drop
                continue
            with self.lock:
                self.open += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, toward_server: bool) -> None:
        try:
            while data := source.recv(PIECE):
                sink.sendall(data)
                if toward_server:
                    self._count(len(data))
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _count(self, size: int) -> None:
        with self.lock:
            self.sent += size
            crossing = self.cuts == 0 and not self.reached.is_set() and self.sent >= self.cut_after
            if crossing:
                self.reached.set()
        if crossing:
            self.release.wait()
            self.drop_all()

    def drop_all(self) -> None:
        with self.lock:
            self.cuts += 1
            sockets, self.open = self.open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        self.drop_all()


@contextmanager
def cutting_proxy(target_port: int, cut_after: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(target_port, cut_after)
    try:
        yield proxy
    finally:
        proxy.close()
