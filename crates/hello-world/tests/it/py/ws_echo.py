"""The WebSocket echo as a real client (Python's websockets) sees it.

Run by tests/it/websocket.rs as `python ws_echo.py MODE URL`; prints `ok` when every check of
MODE holds:
- `echo`: text and binary come back, a ping gets its pong, a message over 64 KiB closes with 1009;
- `idle`: a socket that sends nothing is closed with 1000 (the server's idle timeout is short);
- `drain`: the socket stays open until the server drains, then is closed with 1001.
"""

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

mode, url = sys.argv[1], sys.argv[2]


async def closed_with(ws, within):
    try:
        await asyncio.wait_for(ws.recv(), within)
    except ConnectionClosed:
        return ws.close_code
    raise AssertionError("a message instead of a close")


async def main():
    async with connect(url, open_timeout=5, ping_interval=None, max_size=None) as ws:
        if mode == "echo":
            await ws.send("Hello World!")
            assert await asyncio.wait_for(ws.recv(), 5) == "Hello World!"
            await ws.send(b"\x00\x01\xff")
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01\xff"
            await asyncio.wait_for(await ws.ping(b"are you there"), 5)
            await ws.send("x" * (64 * 1024))
            assert await asyncio.wait_for(ws.recv(), 5) == "x" * (64 * 1024)
            await ws.send("x" * (64 * 1024 + 1))
            code = await closed_with(ws, 5)
            assert code == 1009, code
        elif mode == "idle":
            code = await closed_with(ws, 10)
            assert code == 1000, code
        elif mode == "drain":
            print("open", flush=True)
            code = await closed_with(ws, 20)
            assert code == 1001, code
        else:
            raise AssertionError(f"unknown mode {mode}")
    print("ok")


asyncio.run(main())
