"""The tokenizer view in a lesson, in Chromium: typing re-tokenizes without a page load."""

from __future__ import annotations

from playwright.sync_api import Page, expect


def test_typing_shows_the_tokens_and_their_count(page: Page, server, console_errors):
    page.goto(server + "/learn/what-is-a-token/")
    widget = page.locator("section.tokenize").first
    expect(widget.get_by_test_id("tokens")).to_contain_text("tokens for", timeout=10000)
    page.evaluate("window.__samePage = true")
    widget.locator("textarea").fill("The cat sat on the")
    expect(widget.get_by_test_id("tokens")).to_contain_text("5 tokens for 18 characters")
    expect(widget.locator(".token-strip .tok")).to_have_count(5)
    expect(widget.locator(".token-strip .tok").nth(1)).to_have_text("␣cat")
    assert page.evaluate("window.__samePage") is True
    assert console_errors == []
