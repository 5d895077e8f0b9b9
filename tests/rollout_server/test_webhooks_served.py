"""``edgeship server --workers 2`` as a real process: each worker's dispatcher thread runs, and
between them every delivery is sent once, in order, signed."""

from __future__ import annotations

import time

import requests

from rollout_server.notifications.signing import verify
from tests.rollout_server.conftest import auth
from tests.rollout_server.served import edgeship_server
from tests.rollout_server.webhook_receiver import webhook_receiver

DEADLINE_SECONDS = 60


def test_the_workers_dispatchers_send_each_delivery_once_and_in_order(tmp_path):
    with webhook_receiver() as receiver, edgeship_server(
            tmp_path, "--workers", "2", EDGESHIP_WEBHOOK_DISPATCH_INTERVAL_SECONDS="0.2") as served:
        admin = auth(served.tokens()["EDGESHIP_ADMIN_TOKEN"])
        hook = requests.post(f"{served.url}/v1/webhooks", json={"url": receiver.url}, headers=admin,
                             timeout=30).json()
        queued = [requests.post(f"{served.url}/v1/webhooks/{hook['id']}/test", headers=admin, timeout=30)
                  .json()["delivery_id"] for _ in range(6)]
        received = receiver.wait_for(len(queued), timeout=DEADLINE_SECONDS)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:  # the outcome is stored once the receiver has answered
            listed = requests.get(f"{served.url}/v1/webhooks/{hook['id']}/deliveries", headers=admin,
                                  timeout=30).json()["deliveries"]
            if all(d["status"] == "delivered" for d in listed) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert sorted((d["id"], d["status"], d["attempts"]) for d in listed) == [
        (i, "delivered", 1) for i in queued]
    assert [int(r.delivery) for r in receiver.requests] == queued  # each once, oldest first
    for request in received:
        verify(hook["secret"], request.headers, request.body, time.time())
