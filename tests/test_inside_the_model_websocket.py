"""Inside the model over the lesson widget's websocket: HTML fragments from a real model server."""

from __future__ import annotations

import json
import re
import time

import pytest
from channels.testing import WebsocketCommunicator

from lessons.consumers import ExerciseConsumer, ModelApiConsumer

# Consumers close stale database connections on every message (channels), so these tests
# need database access even where they store nothing.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.sqlite_only,
    pytest.mark.usefixtures("model_server"),
    pytest.mark.django_db(transaction=True),
]

PROMPT = "The capital of France is"


async def widget(name: str = "w-in") -> WebsocketCommunicator:
    ws = WebsocketCommunicator(ExerciseConsumer.as_asgi(), f"/ws/exercise/?widget={name}")
    connected, _ = await ws.connect()
    assert connected
    assert "Model ready" in await ws.receive_from(timeout=10)
    return ws


def inspect(prompt: str = PROMPT, layer="3", head="2", shape="30x9") -> dict:
    """What the widget's form sends (htmx's ws-send: the form's values, and its headers)."""
    return {
        "exercise": "inside-the-model",
        "prompt": prompt,
        "layer": layer,
        "head": head,
        "shape": shape,
        "HEADERS": {},
    }


async def fragments_until(ws: WebsocketCommunicator, needle: str, timeout: float = 30) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.append(await ws.receive_from(timeout=deadline - time.monotonic()))
        if needle in got[-1]:
            return got
    raise AssertionError(f"no {needle!r} in {got}")


async def test_the_widget_gets_tokens_a_heat_map_and_the_logit_lens_as_html(settings):
    ws = await widget()
    await ws.send_json_to(inspect())
    got = await fragments_until(ws, "One forward pass")
    assert "Running the model…" in got[0]
    [html] = [fragment for fragment in got if 'id="inside-out-w-in"' in fragment]

    # The tokens with their ids; the heat map of the chosen head: 5 rows, 10 masked cells above
    # the diagonal, and the first token looking only at itself (the darkest shade).
    assert '<code class="tok">␣capital</code> <span class="token-id" title="token id">3575</span>' in html
    assert 'data-testid="heat-map" data-layer="3" data-head="2"' in html
    assert html.count('<th scope="row">') == 5 + 30  # heat-map rows, then the lens's layers
    assert html.count('<td class="heat-masked">') == 10
    assert '<tr><th scope="row">The</th><td class="heat-9" title="The → The: 100%">' in html
    assert len(re.findall(r'<td class="heat-\d"', html)) == 15
    # The logit lens: every layer, the last one's top guess is the model's answer, highlighted.
    assert '<th scope="row">29 (last)</th><td class="is-final"><code>␣Paris</code>' in html
    # Same model as the page's pickers, so they stay as they are; and no inline styles (CSP).
    assert 'id="inside-picks-w-in"' not in html
    assert "style=" not in "".join(got)
    assert 'id="error-w-in" class="error live-error" role="alert"></p>' in html
    await ws.disconnect()


async def test_another_head_gets_another_map_and_pickers_come_when_the_model_differs(settings):
    ws = await widget()
    await ws.send_json_to(inspect(layer="3", head="2"))
    first = "".join(await fragments_until(ws, "One forward pass"))
    await ws.send_json_to(inspect(layer="20", head="7", shape="12x4"))  # as if the page offered another shape
    second = "".join(await fragments_until(ws, "One forward pass"))
    assert 'data-layer="20" data-head="7"' in second
    cells = re.compile(r'<td class="heat-[^"]+"')
    assert cells.findall(first) != cells.findall(second)
    picks = second[second.index('id="inside-picks-w-in"') :]
    assert '<input type="hidden" name="shape" value="30x9">' in picks
    assert picks.count("<option") == 30 + 9
    assert '<option value="20" selected>20</option>' in picks and '<option value="7" selected>7</option>' in picks
    await ws.disconnect()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (inspect(prompt=" ".join(["word"] * 65)), "the prompt is 65 tokens long; this view takes at most 64"),
        (inspect(layer="30"), "layer must be between 0 and 29"),
        (inspect(head="9"), "head must be between 0 and 8"),
        (inspect(layer="three"), "pick a layer and a head"),
        (inspect(prompt="  "), "type a prompt first"),
    ],
)
async def test_what_it_cannot_show_gets_an_error_and_the_widget_stays_usable(settings, message, error):
    ws = await widget()
    await ws.send_json_to(message)
    got = await fragments_until(ws, 'id="error-w-in"')
    assert error in got[-1]
    await ws.send_json_to(inspect())
    assert "One forward pass" in (await fragments_until(ws, "One forward pass"))[-1]
    await ws.disconnect()


async def test_inspections_between_engine_steps_leave_a_running_generation_unchanged(settings):
    async def generate() -> WebsocketCommunicator:
        ws = WebsocketCommunicator(ModelApiConsumer.as_asgi(), "/ws/model/")
        await ws.connect()
        await ws.receive_from(timeout=10)  # the model's status
        request = {"type": "generate", "id": "g", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 60}
        await ws.send_json_to(request)
        return ws

    async def text_of(ws: WebsocketCommunicator, text: str = "") -> str:
        while True:
            frame = json.loads(await ws.receive_from(timeout=30))
            text += frame.get("text", "") if frame["type"] == "tokens" else ""
            if frame["type"] == "done":
                assert frame["reason"] == "length"
                await ws.disconnect()
                return text

    alone = await text_of(await generate())
    running = await generate()
    first = json.loads(await running.receive_from(timeout=30))
    while first["type"] != "tokens":
        first = json.loads(await running.receive_from(timeout=30))
    # The generation is writing (60 tokens take seconds, an inspection a fraction of one). Each
    # new inspection replaces the widget's last; the last one is answered.
    inspector = await widget()
    for head in "0123":
        await inspector.send_json_to(inspect(head=head))
    got = await fragments_until(inspector, "One forward pass")
    assert 'data-layer="3" data-head="3"' in "".join(got)
    assert await text_of(running, first["text"]) == alone
    await inspector.disconnect()
