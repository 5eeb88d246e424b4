"""The event loop the server runs: asyncio's, taking at most ACCEPT_BATCH new connections per loop iteration.

Not uvloop's: libuv (since 1.45, in uvloop ≥ 0.18) accepts one connection per loop iteration, so while the loop
is busy new connections wait in the kernel's accept queue — under 100 polling clients, 100 more took up to 3 s
to be accepted, and wrk at 200 connections counted 20-70 requests over 2 s. asyncio accepts every waiting
connection at once instead, which starves nobody but lets one of several worker processes sharing the
listening socket take them all (196 of 200 in one worker, measured): ACCEPT_BATCH per iteration keeps both
promptness and balance, since a busier worker iterates more slowly and so takes fewer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

ACCEPT_BATCH = 16
# What uvicorn's `loop` setting takes: the import string of a loop factory.
LOOP = "inferserver.serving.loop:BatchAcceptLoop"


class BatchAcceptLoop(asyncio.SelectorEventLoop):
    # asyncio's own accept step (private, stable since Python 3.7); only its batch size is changed.
    def _accept_connection(self, protocol_factory: Any, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        if len(args) >= 3:  # sslcontext, server, backlog passed positionally
            args = (*args[:2], min(args[2], ACCEPT_BATCH), *args[3:])
        else:
            kwargs["backlog"] = min(kwargs.get("backlog", ACCEPT_BATCH), ACCEPT_BATCH)
        super()._accept_connection(protocol_factory, sock, *args, **kwargs)  # type: ignore[misc]
