"""Progress: marking lessons done, the course page's bars, and continuing where you left off."""

from __future__ import annotations

import pytest
from django.test import Client

from lessons.models import Lesson, LessonProgress

pytestmark = pytest.mark.django_db


def test_marking_a_lesson_done_with_htmx_swaps_the_button(owner_client: Client, owner, course):
    lesson = Lesson.objects.get(slug="the-slot-machine")
    response = owner_client.post(f"/learn/{lesson.slug}/done/", {"done": "1"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="done-form"' in html and "Lesson done" in html and "<html" not in html
    assert LessonProgress.objects.get(user=owner, lesson=lesson).completed_at is not None

    html = owner_client.post(f"/learn/{lesson.slug}/done/", {"done": "0"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Mark lesson as done" in html
    assert LessonProgress.objects.get(user=owner, lesson=lesson).completed_at is None


def test_marking_done_without_htmx_redirects_to_the_lesson(owner_client: Client, course):
    response = owner_client.post("/learn/the-slot-machine/done/", {"done": "1"})
    assert (response.status_code, response["Location"]) == (302, "/learn/the-slot-machine/")


def test_marking_done_needs_an_account_and_a_real_lesson(client: Client, owner_client: Client, course):
    assert client.post("/learn/the-slot-machine/done/").status_code == 302
    assert not LessonProgress.objects.exists()
    assert owner_client.post("/learn/nope/done/").status_code == 404


def test_the_course_page_counts_done_lessons(owner_client: Client, owner, course):
    lessons = list(Lesson.objects.active()[:2])
    for lesson in lessons:
        owner_client.post(f"/learn/{lesson.slug}/done/", {"done": "1"})
    html = owner_client.get("/").content.decode()
    total = Lesson.objects.active().count()
    assert f"2 of {total} lessons done" in html
    assert f'<progress value="2" max="{total}"' in html
    module_size = lessons[0].module.lessons.active().count()
    assert f'data-testid="module-progress">2/{module_size}<' in html


def test_progress_is_per_learner(owner_client: Client, classmate_client: Client, course):
    owner_client.post("/learn/the-slot-machine/done/", {"done": "1"})
    total = Lesson.objects.active().count()
    assert f"0 of {total} lessons done" in classmate_client.get("/").content.decode()


def test_continue_takes_you_to_the_last_lesson_you_opened(owner_client: Client, course):
    assert "Start the course" in owner_client.get("/").content.decode()
    owner_client.get("/learn/a-short-history/")
    html = owner_client.get("/").content.decode()
    assert "Continue: A short history" in html
    assert 'href="/learn/a-short-history/" data-testid="continue"' in html


def test_continue_moves_on_once_that_lesson_is_done(owner_client: Client, course):
    owner_client.get("/learn/a-short-history/")
    owner_client.post("/learn/a-short-history/done/", {"done": "1"})
    html = owner_client.get("/").content.decode()
    assert "Continue: Who builds them" in html


def test_a_hidden_lesson_does_not_count_or_resume(owner_client: Client, course):
    owner_client.get("/learn/a-short-history/")
    Lesson.objects.filter(slug="a-short-history").update(is_active=False)
    html = owner_client.get("/").content.decode()
    assert "Continue: A short history" not in html
