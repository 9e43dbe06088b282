"""Quizzes: graded on the server, answered with htmx, stored per learner."""

from __future__ import annotations

import pytest
from django.test import Client

from lessons.models import Lesson, LessonProgress, QuizAnswer

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/learn/predicting-the-next-word/"}


@pytest.fixture
def lesson(course) -> Lesson:
    return Lesson.objects.get(slug="predicting-the-next-word")


def url(lesson: Lesson, question) -> str:
    return f"/learn/{lesson.slug}/quiz/{question.key}/"


def right_and_wrong(question):
    return question.choices.get(is_correct=True), question.choices.filter(is_correct=False).first()


def test_a_right_answer_is_graded_and_explained(owner_client: Client, owner, lesson):
    question = lesson.questions.first()
    right, _ = right_and_wrong(question)
    response = owner_client.post(url(lesson, question), {"choice": right.key}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert f'id="q-{question.key}"' in html
    assert "Correct!" in html
    assert right.explanation in html
    assert "<html" not in html  # a fragment, not the page
    assert QuizAnswer.objects.get(user=owner, question=question).choice == right


def test_a_wrong_answer_says_so_and_can_be_changed(owner_client: Client, owner, lesson):
    question = lesson.questions.first()
    right, wrong = right_and_wrong(question)
    html = owner_client.post(url(lesson, question), {"choice": wrong.key}, **HTMX).content.decode()
    assert "Not yet" in html and wrong.explanation in html
    assert right.explanation not in html  # the right answer is not given away

    owner_client.post(url(lesson, question), {"choice": right.key}, **HTMX)
    answer = QuizAnswer.objects.get(user=owner, question=question)
    assert (answer.choice, answer.attempts) == (right, 2)


def test_without_htmx_answering_redirects_back_to_the_question(owner_client: Client, lesson):
    question = lesson.questions.first()
    right, _ = right_and_wrong(question)
    response = owner_client.post(url(lesson, question), {"choice": right.key})
    assert response.status_code == 302
    assert response["Location"] == f"/learn/{lesson.slug}/#q-{question.key}"
    assert "Correct!" in owner_client.get(f"/learn/{lesson.slug}/").content.decode()


@pytest.mark.parametrize("tampered", ["no-such-choice", "", "../../etc"])
def test_a_tampered_answer_is_refused_with_a_message(owner_client: Client, owner, lesson, tampered):
    question = lesson.questions.first()
    response = owner_client.post(url(lesson, question), {"choice": tampered}, **HTMX)
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert not QuizAnswer.objects.filter(user=owner).exists()


def test_a_choice_from_another_question_is_refused(owner_client: Client, owner, lesson):
    first, second = lesson.questions.all()[:2]
    foreign = second.choices.exclude(key__in=first.choices.values("key")).first()
    response = owner_client.post(url(lesson, first), {"choice": foreign.key}, **HTMX)
    assert response.status_code == 400
    assert "does not belong to this question" in response.content.decode()


def test_unknown_question_and_lesson_are_404(owner_client: Client, lesson):
    assert owner_client.post(f"/learn/{lesson.slug}/quiz/nope/", {"choice": "a"}).status_code == 404
    assert owner_client.post("/learn/nope/quiz/nope/", {"choice": "a"}).status_code == 404


def test_answering_needs_an_account(client: Client, lesson):
    question = lesson.questions.first()
    response = client.post(url(lesson, question), {"choice": "x"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    response = client.post(url(lesson, question), {"choice": "x"}, **HTMX)
    assert response["HX-Redirect"].startswith("/accounts/login/?next=/learn/predicting-the-next-word/")
    assert not QuizAnswer.objects.exists()


def test_get_is_not_allowed(owner_client: Client, lesson):
    assert owner_client.get(url(lesson, lesson.questions.first())).status_code == 405


def test_learners_never_see_each_others_answers(owner_client, classmate_client, lesson):
    question = lesson.questions.first()
    _, wrong = right_and_wrong(question)
    owner_client.post(url(lesson, question), {"choice": wrong.key}, **HTMX)
    mine = owner_client.get(f"/learn/{lesson.slug}/").content.decode()
    theirs = classmate_client.get(f"/learn/{lesson.slug}/").content.decode()
    assert wrong.explanation in mine and "is-picked" in mine
    assert wrong.explanation not in theirs and "is-picked" not in theirs and "checked" not in theirs


def test_answering_every_question_right_completes_the_lesson(owner_client: Client, owner, lesson):
    questions = list(lesson.questions.active())
    for question in questions[:-1]:
        owner_client.post(url(lesson, question), {"choice": right_and_wrong(question)[0].key}, **HTMX)
    assert not LessonProgress.objects.filter(user=owner, completed_at__isnull=False).exists()

    last = questions[-1]
    html = owner_client.post(url(lesson, last), {"choice": right_and_wrong(last)[0].key}, **HTMX).content.decode()
    assert "Quiz complete" in html
    assert LessonProgress.objects.get(user=owner, lesson=lesson).completed_at is not None
