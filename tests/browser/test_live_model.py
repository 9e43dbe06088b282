"""The live exercises in Chromium, against a real server and a real model server."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.usefixtures("model_server")


def test_click_a_candidate_and_see_the_sentence_and_candidates_change(page: Page, server, console_errors):
    page.goto(server + "/learn/predicting-the-next-word/")
    widget = page.locator("section.next-token")
    expect(widget.get_by_test_id("model-status")).to_contain_text("Model ready", timeout=15000)
    candidates = widget.get_by_test_id("candidates").locator("button.candidate")
    expect(candidates.first).to_be_visible(timeout=20000)
    first_before = candidates.first.inner_text()
    assert "␣cat" in widget.get_by_test_id("candidates").inner_text()

    candidates.filter(has_text="␣moon").click()
    expect(widget.get_by_test_id("sentence")).to_have_text("The cat sat on the moon", timeout=20000)
    expect(candidates.first).not_to_have_text(first_before, timeout=20000)

    widget.get_by_role("button", name="Undo").click()
    expect(widget.get_by_test_id("sentence")).to_have_text("The cat sat on the", timeout=20000)

    # Stream, then stop: the sentence keeps what the model wrote so far.
    widget.get_by_role("button", name="Keep going").click()
    expect(widget.get_by_test_id("sentence")).not_to_have_text("The cat sat on the", timeout=20000)
    widget.get_by_role("button", name="Stop").click()
    expect(widget.locator("#nt-busy-next-word-2, [id^=nt-busy-]")).to_contain_text("Stopped", timeout=20000)
    streamed = widget.get_by_test_id("sentence").inner_text()
    page.wait_for_timeout(1000)
    assert widget.get_by_test_id("sentence").inner_text() == streamed  # nothing arrives after Stop

    widget.get_by_role("button", name="Score my sentence").click()
    expect(widget.get_by_test_id("score")).to_contain_text("perplexity", timeout=30000)
    assert console_errors == []


def test_the_generation_playground_streams_and_stops(page: Page, server, console_errors):
    page.goto(server + "/learn/the-slot-machine/")
    widget = page.locator("section.generate")
    expect(widget.get_by_test_id("model-status")).to_contain_text("Model ready", timeout=15000)
    widget.locator("input[name=temperature]").first.evaluate("e => e.closest('details').open = true")
    widget.locator("input[name=temperature]").fill("0")
    widget.locator("input[name=max_tokens]").fill("20")
    widget.get_by_role("button", name="Generate").click()
    expect(widget.get_by_test_id("generation-done")).to_contain_text(re.compile(r"20 tokens"), timeout=30000)
    first = widget.get_by_test_id("generation").inner_text()
    assert len(first) > len("Once upon a time, a small robot")

    # Greedy is repeatable: the same text comes again (after passing through "Writing…").
    widget.get_by_role("button", name="Generate").click()
    expect(widget.get_by_test_id("generation-done")).to_have_count(0, timeout=10000)
    expect(widget.get_by_test_id("generation-done")).to_contain_text("20 tokens", timeout=30000)
    expect(widget.get_by_test_id("generation")).to_have_text(first)

    widget.locator("input[name=max_tokens]").fill("400")
    widget.get_by_role("button", name="Generate").click()
    expect(widget.get_by_test_id("generation")).not_to_have_text(
        re.compile(r"^Once upon a time, a small robot$"), timeout=20000
    )
    widget.get_by_role("button", name="Stop").click()
    expect(widget.get_by_test_id("generation-done")).to_contain_text("Stopped", timeout=20000)
    assert console_errors == []
