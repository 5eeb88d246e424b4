"""The server's event loop accepts waiting connections in batches of ACCEPT_BATCH per loop iteration."""

from __future__ import annotations

import asyncio
import socket

from inferserver.serving.loop import ACCEPT_BATCH, BatchAcceptLoop


class Counted(asyncio.Protocol):
    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counted.made += 1


def test_waiting_connections_are_accepted_a_batch_per_iteration_and_all_in_the_end() -> None:
    Counted.made = 0
    loop = BatchAcceptLoop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(ACCEPT_BATCH * 2 + 5)]
    try:
        # What the listening socket's reader does on one loop iteration, as asyncio schedules it (backlog 2048).
        loop._accept_connection(Counted, listener, None, None, 2048, 60.0, 30.0)  # type: ignore[attr-defined]
        loop.run_until_complete(asyncio.sleep(0.05))  # the accepted connections' transports are made
        assert Counted.made == ACCEPT_BATCH
        server = loop.run_until_complete(loop.create_server(Counted, sock=listener))
        loop.run_until_complete(asyncio.sleep(0.2))
        assert Counted.made == len(clients)  # the rest on the next iterations: nobody left waiting
        server.close()
    finally:
        for client in clients:
            client.close()
        loop.close()
