"""Receiving a request body in the event loop: counted against its route's limit, under a deadline
that grows with what arrives, into memory and past ~1 MiB into a temporary file.

Why in the event loop: a body that trickles in must not hold a thread (that is what let a few
slow sockets stall the old server), so the app's threads only ever see complete bodies
(:mod:`rollout_server.wsgi_bridge`). Why a deadline that grows: a fixed one would cut off a 2 GiB
publish on a slow link, an idle timeout alone lets a client send a byte every few seconds for
ever. As Apache's ``mod_reqtimeout`` (``body=20,MinRate=500``), a body has ``grace_seconds`` plus
one second for every ``min_bytes_per_second`` received so far.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

#: bodies up to this size stay in memory; larger ones go on to a temporary file.
MEMORY_BYTES = 1024 * 1024
#: once on disk, bytes are gathered to this size before one write (in a thread: disks may block).
DISK_WRITE_BYTES = 256 * 1024

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class BodyPolicy:
    """How long a body may take to arrive: ``grace_seconds`` + received / ``min_bytes_per_second``."""

    grace_seconds: float
    min_bytes_per_second: float

    def allowed_seconds(self, received_bytes: int) -> float:
        return self.grace_seconds + received_bytes / self.min_bytes_per_second


class BodyRefused(Exception):
    """The body was not received whole; ``status`` (413, 408) says why, ``None`` if the client left."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Spool:
    """A body being received: memory up to :data:`MEMORY_BYTES`, then a temporary file."""

    def __init__(self, memory_bytes: int = MEMORY_BYTES) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115
        self._memory_bytes = memory_bytes
        self._pending = bytearray()
        self.size_bytes = 0

    async def write(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes <= self._memory_bytes:
            self.file.write(chunk)  # in memory: no I/O
            return
        self._pending += chunk
        if len(self._pending) >= DISK_WRITE_BYTES:
            await self._flush()

    async def finish(self) -> IO[bytes]:
        """The whole body, positioned at its start."""
        await self._flush()
        self.file.seek(0)
        return self.file

    async def _flush(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            await asyncio.to_thread(self.file.write, data)  # the first one moves memory to disk

    def close(self) -> None:
        self.file.close()


async def receive_body(receive: Receive, limit_bytes: int, policy: BodyPolicy) -> Spool:
    """Read an ASGI request's body whole.

    Raises:
        BodyRefused: 413 at ``limit_bytes + 1`` bytes (chunked bodies are counted as they
            arrive), 408 when the body is late by ``policy``, ``None`` when the client left.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    spool = Spool()
    try:
        more = True
        while more:
            left = started + policy.allowed_seconds(spool.size_bytes) - loop.time()
            try:
                async with asyncio.timeout(max(left, 0)):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(408, late_detail(policy)) from None
            if message["type"] == "http.disconnect":
                raise BodyRefused(None, "the client closed the connection before its body was sent")
            chunk = message.get("body", b"")
            if spool.size_bytes + len(chunk) > limit_bytes:
                raise BodyRefused(413, too_large_detail(limit_bytes))
            if chunk:
                await spool.write(chunk)
            more = message.get("more_body", False)
        await spool.finish()
        return spool
    except BaseException:
        spool.close()
        raise


def too_large_detail(limit_bytes: int) -> str:
    return f"the request body is over this route's limit of {limit_bytes} bytes"


def late_detail(policy: BodyPolicy) -> str:
    return (f"the request body did not arrive in time ({policy.grace_seconds:g} s, plus 1 s per "
            f"{policy.min_bytes_per_second:g} bytes received)")
