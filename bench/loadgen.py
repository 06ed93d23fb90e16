"""A small HTTP/1.1 load generator for the write benchmarks: prepared requests written on
keep-alive connections from one asyncio loop. Part of the floor is the client's own CPU (it
shares the cores with the server); an httpx client spends more per request than the floor
server does, which would hide the server's cost behind the client's.

Only what the compute API and the floor answer: a status line, headers, a Content-Length
body (never chunked)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


def request(method: str, path: str, headers: Mapping[str, str], body: Any = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", "Host: bench"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        head.append("Content-Type: application/json")
    head.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def _connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes,
                    expect: int) -> float:
    """One request on the connection; its round trip in seconds. A wrong status is an error,
    never a timing."""
    t0 = time.perf_counter()
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked responses are not read here")
    body = await reader.readexactly(length) if length else b""
    seconds = time.perf_counter() - t0
    status = int(head[9:12])
    if status != expect:
        first = raw.split(b"\r\n", 1)[0].decode()
        raise RuntimeError(f"{first}: HTTP {status} (wanted {expect}): {body[:300]!r}")
    return seconds


def one_at_a_time(base: str, requests: list[bytes], expect: int, warmup: int = 5) -> list[float]:
    """Each request in turn on one connection (the first `warmup` of them again first, not
    timed: they must be repeatable, e.g. floor writes); the round trips in seconds."""

    async def run() -> list[float]:
        reader, writer = await _connect(base)
        try:
            if warmup and requests[0] == requests[-1]:
                for raw in requests[:warmup]:
                    await _exchange(reader, writer, raw, expect)
            return [await _exchange(reader, writer, raw, expect) for raw in requests]
        finally:
            writer.close()

    return asyncio.run(run())


def concurrently(base: str, requests: list[bytes], expect: int, clients: int) -> list[float]:
    """The requests from `clients` connections at once, each taking the next one not sent
    yet; the round trips in seconds, in the order they finished."""
    pending = list(reversed(requests))
    done: list[float] = []

    async def client() -> None:
        reader, writer = await _connect(base)
        try:
            while pending:
                done.append(await _exchange(reader, writer, pending.pop(), expect))
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(run())
    return done
