"""The tokenizer view: coloured tokens with ids and counts, from the course model's tokenizer."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_text_comes_back_as_tokens_with_ids_and_a_count(client: Client):
    response = client.get("/tokenizer/", {"text": "The cat sat on the", "widget": "w-1"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="tok-out-w-1"' in html
    assert "<strong>5</strong> tokens for 18 characters" in html
    assert '<span class="tok tok-c1" title="id 2644">␣cat</span>' in html
    assert "504 2644 2643 335 260" in html
    assert "<html" not in html


def test_without_htmx_it_is_a_whole_page_with_the_form(client: Client):
    html = client.get("/tokenizer/", {"text": "hello world"}).content.decode()
    assert "<h1>Tokenizer view</h1>" in html and "<textarea" in html and "hello world" in html


def test_markup_in_the_text_is_escaped(client: Client):
    html = client.get("/tokenizer/", {"text": "<script>alert(1)</script>"}, **HTMX).content.decode()
    assert "<script>" not in html and "&lt;" in html


def test_too_much_text_gets_a_clear_error(client: Client):
    html = client.get("/tokenizer/", {"text": "a" * 5001}, **HTMX).content.decode()
    assert "5,001 characters long" in html and 'role="alert"' in html


def test_a_tokenizer_that_is_not_yours_falls_back_with_a_message(owner_client: Client):
    html = owner_client.get(
        "/tokenizer/", {"text": "hi", "tokenizer": "00000000-0000-0000-0000-000000000000"}, **HTMX
    ).content.decode()
    assert "not one of yours" in html and "<strong>1</strong> token" in html


def test_the_lesson_embeds_the_widget(client: Client, course):
    html = client.get("/learn/what-is-a-token/").content.decode()
    assert 'data-exercise="tokenize"' in html
    assert 'hx-trigger="load"' in html
