"""The gRPC health service as a real gRPC client sees it (grpcio, grpcio-health-checking).

Run by tests/it/grpc.rs as `python health_check_and_watch.py PUBLIC ADMIN`; prints `ok` when every check
holds, and fails with the first that does not. Every call has a deadline.
"""

import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

public, admin = sys.argv[1], sys.argv[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def admin_post(path):
    request = urllib.request.Request(f"http://{admin}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200, answer.status


def expect_code(call, code):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, f"{error.code()} instead of {code}: {error.details()}"
        return
    raise AssertionError(f"no error, {code} expected")


with grpc.insecure_channel(public) as channel:
    health = health_pb2_grpc.HealthStub(channel)

    def check(service):
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    for service in ("", "hello-world"):
        assert check(service) == SERVING, (service, check(service))
    expect_code(lambda: check("no-such-service"), grpc.StatusCode.NOT_FOUND)

    # A method the health service does not have, and a service the server does not serve.
    for method in ("/grpc.health.v1.Health/List2", "/no.such.Service/Call"):
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        expect_code(lambda: stub(b"", timeout=5), grpc.StatusCode.UNIMPLEMENTED)

    # Watch follows readiness: the operator takes the replica out of rotation and back.
    watch = health.Watch(health_pb2.HealthCheckRequest(service="hello-world"), timeout=20)
    assert next(watch).status == SERVING
    admin_post("/readyz/disable")
    assert next(watch).status == NOT_SERVING
    assert check("") == NOT_SERVING
    admin_post("/readyz/enable")
    assert next(watch).status == SERVING
    assert check("") == SERVING
    watch.cancel()

    # Watching a name the server does not know is NOT_FOUND, as checking it is.
    unknown = health.Watch(health_pb2.HealthCheckRequest(service="no-such-service"), timeout=5)
    expect_code(lambda: next(unknown), grpc.StatusCode.NOT_FOUND)

print("ok")
