"""`python -m bench.otlp_sink --port 4317`: an OTLP/gRPC trace collector that
keeps nothing but a count, for measuring the services with tracing on
(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317) without a real collector.
The tests use OtlpSink itself to read what the processes export."""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """A TraceService on 127.0.0.1:`port` (0: a free one); `keep` keeps every span received."""

    def __init__(self, port: int = 0, keep: bool = False) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self.span_count = 0
        self.spans: list[tuple[str, trace_pb2.Span]] = []  # (service.name, span)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope_spans in resource_spans.scope_spans:
                    self.span_count += len(scope_spans.spans)
                    if self._keep:
                        self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self) -> None:
        self._server.stop(grace=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4317)
    port = parser.parse_args().port
    sink = OtlpSink(port)
    print(f"OTLP sink on {sink.endpoint}; Ctrl-C or SIGTERM prints the spans received", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    sink.stop()
    print(f"{sink.span_count} spans received", flush=True)


if __name__ == "__main__":
    main()
