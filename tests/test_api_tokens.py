"""API tokens on the account page: created once-visible, listed, revoked; only by their owner."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

from lessons.models import ApiToken

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def test_creating_a_token_shows_the_key_once_and_stores_only_its_hash(owner_client: Client, owner):
    html = owner_client.post("/accounts/tokens/", {"name": "laptop"}, **HTMX).content.decode()
    token = ApiToken.objects.get(user=owner)
    key = html.split('data-testid="new-token">')[1].split("<")[0]
    assert key.startswith("llmc_") and ApiToken.hash(key) == token.digest
    assert key not in token.digest and token.hint == key[:11]
    page = owner_client.get("/accounts/").content.decode()
    assert "laptop" in page and key not in page


def test_without_htmx_the_account_page_shows_the_new_key(owner_client: Client):
    html = owner_client.post("/accounts/tokens/", {"name": "desk"}).content.decode()
    assert "<h1>Your account</h1>" in html and 'data-testid="new-token">llmc_' in html


def test_a_token_needs_a_name_and_there_is_a_cap(owner_client: Client, owner):
    response = owner_client.post("/accounts/tokens/", {"name": " "}, **HTMX)
    assert response.status_code == 400 and "Give the token a name" in response.content.decode()
    for number in range(5):
        owner_client.post("/accounts/tokens/", {"name": f"t{number}"}, **HTMX)
    response = owner_client.post("/accounts/tokens/", {"name": "one too many"}, **HTMX)
    assert response.status_code == 400 and "revoke one first" in response.content.decode()
    assert ApiToken.objects.filter(user=owner).count() == 5


def test_revoking(owner_client: Client, owner):
    token, _ = ApiToken.issue(owner, "old")
    html = owner_client.post(f"/accounts/tokens/{token.code}/revoke/", **HTMX).content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None and "No tokens yet" in html


def test_nobody_revokes_someone_elses_token(classmate_client: Client, owner):
    token, _ = ApiToken.issue(owner, "mine")
    assert classmate_client.post(f"/accounts/tokens/{token.code}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_the_command_prints_a_working_key(owner, capsys):
    call_command("api_token", "ada")
    key = capsys.readouterr().out.strip()
    assert ApiToken.objects.get(digest=ApiToken.hash(key)).user == owner


def test_the_serving_lesson_embeds_the_token_box(owner_client: Client, client: Client, owner, course):
    ApiToken.issue(owner, "from-the-lesson")
    mine = owner_client.get("/learn/an-http-api/").content.decode()
    assert 'id="api-token-box"' in mine and "from-the-lesson" in mine
    assert "curl http://testserver/v1/completions" in mine
    anonymous = client.get("/learn/an-http-api/").content.decode()
    assert 'id="api-token-box"' not in anonymous and "to create an API token" in anonymous
