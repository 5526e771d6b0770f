"""The HTTP gateway for tests: uvicorn serving gateway.app in a thread of the
test process (its own event loop), on a free port, in front of a test
cluster; and a small HTTP client (http.client, one connection a call)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import uvicorn

from common.config import Settings
from gateway.app import create_app
from tests.cluster import Cluster


class GatewayServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(settings), lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"gateway-{self.port}", daemon=True)
        self._error: BaseException | None = None

    @classmethod
    def for_cluster(cls, cluster: Cluster, **overrides: Any) -> GatewayServer:
        settings = replace(
            cluster.settings,
            **{
                "xp_target": f"localhost:{cluster.ports['xp']}",
                "achievements_target": f"localhost:{cluster.ports['achievements']}",
                "levels_target": f"localhost:{cluster.ports['levels']}",
                **overrides,
            },
        )
        return cls(settings)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as error:  # reported by start()
            self._error = error

    def start(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the gateway did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not start within 30 s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


@dataclass
class HttpResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http_call(
    base: GatewayServer | str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
    timeout: float = 30,
) -> HttpResponse:
    """One HTTP request; `body` is sent as JSON, `raw_body` as given."""
    port = base.port if isinstance(base, GatewayServer) else int(base.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {**(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        payload = raw_body
        if payload is None and body is not None:
            payload = json.dumps(body).encode()
        if payload is not None:
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return HttpResponse(response.status, response.headers, response.read())
    finally:
        connection.close()
