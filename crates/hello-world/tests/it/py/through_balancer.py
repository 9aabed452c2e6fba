"""gRPC health and the WebSocket echo through a balancer, as real clients see them.

Run by `cargo xtask e2e` (the single-engine stack's balancer and the cluster's external one) as
`python through_balancer.py HOST:PORT`; prints one line per protocol, then `ok` when every check
holds. Every call has a deadline.
"""

import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect

address = sys.argv[1]
SERVING = health_pb2.HealthCheckResponse.SERVING

with grpc.insecure_channel(address) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "hello-world"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == SERVING, (service, status)
    try:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-service"), timeout=5)
        raise AssertionError("no error for an unknown service")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.code()
print("grpc: Check SERVING for '' and 'hello-world', NOT_FOUND for an unknown service")


async def websocket():
    async with connect(f"ws://{address}/ws/echo", open_timeout=5, ping_interval=None) as ws:
        served_by = ws.response.headers.get("x-served-by", "?")
        await ws.send("Hello World!")
        assert await asyncio.wait_for(ws.recv(), 5) == "Hello World!"
        await ws.send(b"\x00\x01\xff")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01\xff"
        await asyncio.wait_for(await ws.ping(b"through the balancer"), 5)
    print(f"websocket: text, binary and ping echoed by {served_by}")


asyncio.run(websocket())
print("ok")
