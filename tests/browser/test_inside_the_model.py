"""Inside the model in Chromium, against a real server and a real model server."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

pytestmark = pytest.mark.usefixtures("model_server")

# The lesson's prompt, "When Mary and John went to the store, John gave a drink to", is 14 tokens.
TOKENS = 14


def test_the_heat_map_and_the_lens_follow_the_head_and_survive_a_dropped_connection(page: Page, server, console_errors):
    # Every widget socket goes through Playwright, which passes the frames on untouched and can
    # drop the connection the way a flaky network or a restarted proxy does.
    sockets: list[WebSocketRoute] = []

    def route(socket: WebSocketRoute) -> None:
        sockets.append(socket)
        socket.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/exercise/"), route)
    page.goto(server + "/learn/heads-and-layers/")
    widget = page.locator("section.inside-the-model")
    expect(widget.get_by_test_id("model-status")).to_contain_text("Model ready", timeout=15000)

    heat = widget.get_by_test_id("heat-map")
    expect(heat).to_have_attribute("data-head", "0", timeout=20000)
    expect(heat.locator("tbody tr")).to_have_count(TOKENS)
    expect(heat.locator("td.heat-masked")).to_have_count(TOKENS * (TOKENS - 1) // 2)
    expect(widget.get_by_test_id("inside-tokens").locator("li")).to_have_count(TOKENS)
    lens = widget.get_by_test_id("logit-lens")
    expect(lens.locator("tbody tr")).to_have_count(30)
    last_layer = lens.locator("tbody tr").last
    expect(last_layer.locator("th")).to_have_text("29 (last)")
    expect(last_layer.locator("td").first).to_have_class("is-final")
    expect(last_layer.locator("td").first).to_contain_text("␣Mary")
    expect(widget.get_by_test_id("inside-status")).to_contain_text("One forward pass over 14 tokens")

    def shades() -> list[str]:
        return heat.locator("td").evaluate_all("cells => cells.map(cell => cell.className)")

    head_0 = shades()
    widget.get_by_label("Head").select_option("4")
    expect(heat).to_have_attribute("data-head", "4", timeout=20000)
    assert shades() != head_0

    # Drop the connection (1011, as a server going away would): htmx reconnects, the widget asks
    # again for what its form holds, and it keeps answering.
    heat.evaluate("table => table.setAttribute('data-before-the-drop', '')")
    sockets[-1].close(code=1011, reason="the test dropped the connection")
    deadline = time.monotonic() + 15
    while len(sockets) < 2:
        assert time.monotonic() < deadline, "htmx did not reconnect"
        page.wait_for_timeout(100)
    redrawn = widget.locator("[data-testid=heat-map]:not([data-before-the-drop])")
    expect(redrawn).to_have_attribute("data-head", "4", timeout=20000)
    widget.get_by_label("Layer").select_option("20")
    expect(heat).to_have_attribute("data-layer", "20", timeout=20000)
    expect(heat).to_have_attribute("data-head", "4")

    # A prompt the view cannot take says why, and the next one works.
    widget.locator("textarea[name=prompt]").fill(" ".join(["word"] * 70))
    widget.get_by_role("button", name="Look inside").click()
    expect(widget.get_by_role("alert")).to_contain_text("this view takes at most 64", timeout=20000)
    widget.locator("textarea[name=prompt]").fill("The capital of France is")
    widget.get_by_role("button", name="Look inside").click()
    expect(heat.locator("tbody tr")).to_have_count(5, timeout=20000)
    # The last layer's lens is the model's own answer: 77% in float32, 76% in bfloat16.
    expect(lens.locator("td.is-final").last).to_have_text(re.compile(r"^␣Paris 7[5-8]%$"))
    expect(widget.locator(".live-error")).to_be_empty()
    assert console_errors == []
