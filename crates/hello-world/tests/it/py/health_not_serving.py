"""A draining replica's gRPC health, as grpcio sees it: NOT_SERVING for "" and hello-world.

Run by tests/it/grpc.rs as `python health_not_serving.py PUBLIC`; prints `ok`.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "hello-world"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING, (service, answer)

print("ok")
