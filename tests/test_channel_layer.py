"""No answer is lost when other learners' websockets close: learners leaving, over a real server.

channels-redis 4.3.0 loses a message meant for one consumer when another consumer of the same
web process, the one popping messages for all of them at that moment, is cancelled because its
websocket closed. Here four learners finish at about the same time, again and again, on a real
daphne server with a real model server; every one of them must get every answer.
With channels-redis's own layer, some attempt leaves a learner waiting for its "done" frame;
when the lost message is put back into Redis, it may come after a later one (its request's
"done") and be dropped: the candidates must arrive, before their "done".
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

pytestmark = [pytest.mark.asyncio, pytest.mark.sqlite_only, pytest.mark.usefixtures("model_server")]


async def learner(server: str, number: int) -> None:
    url = server.replace("http://", "ws://") + "/ws/model/"
    async with websockets.connect(url, origin=server) as ws:
        assert json.loads(await ws.recv())["model"] == "ready"
        for round_number in range(3):
            for kind, extra in (("g", {"max_tokens": 6, "temperature": 0}), ("c", {"max_tokens": 0, "candidates": 3})):
                request_id = f"{kind}{round_number}"
                await ws.send(json.dumps({"type": "generate", "id": request_id, "prompt": f"Fact {number}:", **extra}))
                kinds = []
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    assert frame["type"] != "error", frame
                    if frame["id"] == request_id:
                        kinds.append(frame["type"])
                    if frame["type"] == "done" and frame["id"] == request_id:
                        break
                # Every answer, in order: one out of order comes after its request is over and
                # is dropped, which leaves the page without its candidates.
                if kind == "c":
                    assert [k for k in kinds if k != "queued"] == ["started", "candidates", "done"], kinds


async def test_learners_leaving_together_lose_no_one_elses_answers(server):
    for _ in range(4):
        await asyncio.gather(*(learner(server, number) for number in range(4)))
