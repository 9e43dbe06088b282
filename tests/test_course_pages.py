"""The course page and lesson pages, for visitors and learners."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string
from django.test import Client

from lessons.exercises import EXERCISES, Exercise
from lessons.models import Lesson

pytestmark = pytest.mark.django_db


def test_a_visitor_sees_every_module_and_lesson(client: Client, course):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    for lesson in Lesson.objects.active():
        assert lesson.get_absolute_url() in html
    assert "Start the course" in html
    assert "Sign up" in html


def test_a_visitor_can_read_a_lesson_but_not_answer_its_quiz(client: Client, course):
    response = client.get("/learn/predicting-the-next-word/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Predicting the next word</h1>" in html
    assert "to answer the quiz" in html
    assert "<fieldset disabled>" in html
    assert "Mark lesson as done" not in html


def test_an_exercise_that_is_not_built_shows_a_coming_soon_box():
    # Every exercise of the course is built now; a new one starts life without a template.
    unbuilt = Exercise("word-vectors", "Word vectors", "Arithmetic on word vectors.", ("word",))
    html = render_to_string("exercises/_exercise.html", {"exercise": unbuilt, "options": {"word": "king"}, "uid": "x"})
    assert 'class="exercise coming-soon" data-exercise="word-vectors"' in html
    assert "Word vectors" in html and "being built" in html


def test_every_exercise_a_lesson_embeds_renders_its_widget(client: Client, course):
    for lesson in Lesson.objects.active():
        for name in lesson.exercise_names():
            assert EXERCISES[name].template, name
    html = client.get(Lesson.objects.get(key="lora").get_absolute_url()).content.decode()
    assert 'data-exercise="adapter-compare"' in html and "coming-soon" not in html


def test_live_exercises_render_their_widget(client: Client, course):
    html = client.get("/learn/predicting-the-next-word/").content.decode()
    assert 'data-exercise="next-token" hx-ext="ws" ws-connect="/ws/exercise/?widget=next-word-' in html
    assert "The cat sat on the" in html
    assert 'coming-soon" data-exercise="next-token"' not in html


def test_unknown_and_malformed_slugs_get_a_friendly_404(client: Client, course):
    for url in ["/learn/no-such-lesson/", "/learn/../../etc/passwd/", "/learn/%2e%2e/"]:
        response = client.get(url)
        assert response.status_code == 404, url
    assert "We could not find that page" in client.get("/learn/no-such-lesson/").content.decode()


def test_a_hidden_lesson_is_not_served(client: Client, course):
    Lesson.objects.filter(slug="the-slot-machine").update(is_active=False)
    assert client.get("/learn/the-slot-machine/").status_code == 404
    assert "/learn/the-slot-machine/" not in client.get("/").content.decode()


def test_lessons_link_to_their_neighbours(client: Client, course):
    first, second, third = Lesson.objects.active()[:3]
    html = client.get(second.get_absolute_url()).content.decode()
    assert f'href="{first.get_absolute_url()}" rel="prev"' in html
    assert f'href="{third.get_absolute_url()}" rel="next"' in html


def test_pages_send_a_content_security_policy_and_load_nothing_from_elsewhere(client: Client, course):
    response = client.get("/learn/predicting-the-next-word/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    html = response.content.decode()
    assert "http://" not in html.replace("http://testserver", "")
    assert "<script>" not in html and "style=" not in html


def test_static_files_are_served(client: Client, course, live_server):
    import urllib.request

    with urllib.request.urlopen(f"{live_server.url}/static/vendor/htmx/htmx-2.0.11.min.js") as response:
        assert response.status == 200
        assert b"htmx" in response.read(2000)
