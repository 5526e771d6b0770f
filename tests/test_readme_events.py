"""The README's webhook receiver, run as written: it takes a real signed
delivery from the events service and refuses a forged or replayed one."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from devcluster.dynamodb_local import REPO_ROOT, free_port
from rewards.v1 import events_pb2, xp_pb2
from tests.cluster import Cluster, unique

SECRET = "readme-" + "0123456789" * 3


def readme_receiver() -> str:
    section = (REPO_ROOT / "README.md").read_text().split("### Receive webhooks", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def post(port: int, body: bytes, signature: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=body, method="POST", headers={"Rewards-Signature": signature}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:
        return 0  # not listening yet


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_readme_receiver_takes_signed_events_and_refuses_forged_ones(
    new_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(readme_receiver())
    port = free_port()
    output = tmp_path / "receiver.out"
    with open(output, "wb") as out:
        receiver = subprocess.Popen(
            [sys.executable, str(script)],
            env={**os.environ, "WEBHOOK_SECRET": SECRET, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: post(port, b"{}", "") == 401)  # listening, and unsigned is refused
        now = str(int(time.time()))
        forged = hmac.new(b"another secret", f"{now}.{{}}".encode(), hashlib.sha256).hexdigest()
        assert post(port, b"{}", f"t={now},v1={forged}") == 401
        old = str(int(time.time()) - 3600)
        replayed = hmac.new(SECRET.encode(), f"{old}.{{}}".encode(), hashlib.sha256).hexdigest()
        assert post(port, b"{}", f"t={old},v1={replayed}") == 401

        cluster = new_cluster(events=True, events_poll_s=0.1, webhooks_allow_http=True)
        cluster.events.PutWebhook(
            events_pb2.PutWebhookRequest(
                webhook=events_pb2.Webhook(webhook_id="readme", url=f"http://127.0.0.1:{port}/", secret=SECRET)
            )
        )
        activity = unique("readme")
        cluster.xp.PutActivity(
            xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=activity, name="R", xp=5))
        )
        user = unique("alice")
        cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity, request_id="r1"))
        line = f"EVENT_TYPE_XP_AWARDED {user} req#r1"
        wait_for(lambda: line in output.read_text())
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    assert output.read_text().splitlines().count(line) == 1
