#!/usr/bin/env python3
"""bench/slow_receiver.py: HTTP receivers for bench/slow_hosts.sh.

  slow_receiver.py PORT DELAY_MS   answers every POST with 204 after DELAY_MS,
                                   keeping connections alive (any number at once)
  slow_receiver.py PORT never      accepts connections and reads, never answers

Prints "ready" once listening.  Counts nothing: the benchmark reads the
dispatcher's own records.
"""
import asyncio
import os
import sys


inflight = 0
peak = 0


async def report():
    """With SLOW_RECEIVER_STATS set: each second, the most requests in progress."""
    global peak
    while True:
        await asyncio.sleep(1)
        print("peak in progress", peak, file=sys.stderr, flush=True)
        peak = inflight


async def slow(reader, writer, delay):
    global inflight, peak
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            inflight += 1
            peak = max(peak, inflight)
            await asyncio.sleep(delay)
            inflight -= 1
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def never(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    port = int(sys.argv[1])
    if sys.argv[2] == "never":
        handler = never
    else:
        delay = int(sys.argv[2]) / 1000.0
        handler = lambda r, w: slow(r, w, delay)
    server = await asyncio.start_server(handler, os.environ.get("SLOW_RECEIVER_HOST", "127.0.0.1"), port, backlog=1024)
    print("ready", flush=True)
    if os.environ.get("SLOW_RECEIVER_STATS"):
        asyncio.ensure_future(report())
    async with server:
        await server.serve_forever()


asyncio.run(main())
