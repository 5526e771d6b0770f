"""`python -m common.health_probe ADDRESS [SERVICE]`: exits 0 only when the
server at ADDRESS answers grpc.health.v1 Check with SERVING for SERVICE ("",
the whole server, by default), and 1 otherwise; with an http:// URL as ADDRESS
(the gateway's /healthz), only when a GET of it answers 2xx. What container
health checks run: the images have no grpc_health_probe binary and no curl, and
this needs nothing the services do not already install. One argument each,
without spaces: podman's Docker API splits a CMD check's arguments at spaces
(podman#26519), so a `python -c "..."` check would not run there."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Below the health checks' own timeout in docker-compose.yml, so that the probe
# reports why it failed instead of being killed.
DEFAULT_DEADLINE_S = 2.0

HEALTHY, UNHEALTHY = 0, 1


def probe(address: str, service: str = "", deadline_s: float = DEFAULT_DEADLINE_S) -> int:
    """HEALTHY when `address` reports SERVING for `service`; prints the outcome."""
    # The address is local to the container: a proxy from the environment must not get in the way.
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            # mypy does not see the methods the stub's untyped __init__ sets.
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline_s)  # type: ignore[attr-defined]
        except grpc.RpcError as error:
            print(f"{address} {service!r}: {error.code().name}: {error.details()}", file=sys.stderr)
            return UNHEALTHY
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{address} {service!r}: {status}", file=sys.stdout if serving else sys.stderr)
    return HEALTHY if serving else UNHEALTHY


def probe_http(url: str, deadline_s: float = DEFAULT_DEADLINE_S) -> int:
    """HEALTHY when a GET of `url` answers 2xx (urllib raises on anything else); prints the outcome."""
    # Local to the container, as above: no proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=deadline_s) as response:
            print(f"{url}: {response.status}")
            return HEALTHY
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return UNHEALTHY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.health_probe",
        description="Exit 0 only when a gRPC server reports SERVING (grpc.health.v1), or a GET of an http:// URL answers 2xx.",
    )
    parser.add_argument("address", help="host:port of the gRPC server, or an http:// URL to GET")
    parser.add_argument(
        "service", nargs="?", default="", help='service name, such as rewards.v1.XpService ("" = the server)'
    )
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if args.address.startswith("http://"):
        if args.service:
            parser.error("SERVICE is for gRPC addresses, not URLs")
        return probe_http(args.address, args.deadline)
    return probe(args.address, args.service, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
