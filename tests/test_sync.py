"""sync_lessons: new, changed and removed lessons; learners' progress survives every sync."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from lessons.models import Choice, Lesson, LessonProgress, Module, Question, QuizAnswer
from tests.factories import lesson_md, small_course

pytestmark = pytest.mark.django_db


def sync(root) -> None:
    call_command("sync_lessons", path=root, stdout=io.StringIO())


def test_it_creates_modules_lessons_questions_and_choices(tmp_path):
    sync(small_course(tmp_path, first=lesson_md(), second=lesson_md(key="second", title="Second")))
    assert Module.objects.get().key == "basics"
    assert list(Lesson.objects.values_list("key", "order")) == [("first", 1), ("second", 2)]
    assert Question.objects.count() == 2
    assert Choice.objects.filter(is_correct=True).count() == 2
    first = Lesson.objects.get(key="first")
    assert first.exercise_names() == ["next-token"]
    assert first.segments[-1] == {"exercise": "next-token", "options": {"prompt": "The cat sat on the"}}


def test_a_changed_lesson_keeps_its_learners_progress_and_answers(tmp_path, owner):
    sync(small_course(tmp_path, first=lesson_md()))
    lesson = Lesson.objects.get(key="first")
    question = lesson.questions.get()
    LessonProgress.objects.create(user=owner, lesson=lesson)
    synced_at = lesson.updated_at
    QuizAnswer.objects.create(user=owner, question=question, choice=question.choices.get(key="right"))

    # New title, new text, new slug (the file is renamed): still the same lesson.
    (tmp_path / "01-basics" / "01-first.md").unlink()
    small_course(tmp_path, renamed=lesson_md(title="A new title", body="## Rewritten\n"))
    sync(tmp_path)

    lesson.refresh_from_db()
    assert (lesson.title, lesson.slug) == ("A new title", "renamed")
    assert lesson.updated_at > synced_at
    assert "Rewritten" in lesson.segments[0]["html"]
    assert LessonProgress.objects.get(user=owner).lesson == lesson
    assert QuizAnswer.objects.get(user=owner).choice.key == "right"


def test_a_removed_lesson_is_hidden_not_deleted(tmp_path, owner):
    sync(small_course(tmp_path, first=lesson_md(), second=lesson_md(key="second")))
    second = Lesson.objects.get(key="second")
    LessonProgress.objects.create(user=owner, lesson=second)
    (tmp_path / "01-basics" / "02-second.md").unlink()
    sync(tmp_path)

    second.refresh_from_db()
    assert not second.is_active
    assert LessonProgress.objects.filter(lesson=second).exists()
    assert list(Lesson.objects.active().values_list("key", flat=True)) == ["first"]

    # Put back, it comes back with the progress it had.
    small_course(tmp_path, first=lesson_md(), second=lesson_md(key="second"))
    sync(tmp_path)
    second.refresh_from_db()
    assert second.is_active


def test_removed_questions_and_choices_are_hidden(tmp_path):
    sync(small_course(tmp_path, first=lesson_md()))
    sync(small_course(tmp_path, first=lesson_md(quiz="")))
    assert not Question.objects.get(key="q1").is_active
    assert Question.objects.active().count() == 0


def test_two_lessons_can_swap_slugs(tmp_path):
    sync(small_course(tmp_path, alpha=lesson_md(key="one"), beta=lesson_md(key="two")))
    for path in (tmp_path / "01-basics").glob("0*.md"):
        path.unlink()
    small_course(tmp_path, beta=lesson_md(key="one"), alpha=lesson_md(key="two"))
    sync(tmp_path)
    assert dict(Lesson.objects.values_list("key", "slug")) == {"one": "beta", "two": "alpha"}


def test_syncing_twice_changes_nothing(tmp_path):
    root = small_course(tmp_path, first=lesson_md())
    sync(root)
    before = Lesson.objects.get().updated_at
    sync(root)
    assert Lesson.objects.get().updated_at == before


def test_a_broken_file_fails_the_sync_and_changes_nothing(tmp_path):
    sync(small_course(tmp_path, first=lesson_md()))
    small_course(tmp_path, first=lesson_md(title="Changed"), second="---\nkey: [oops\n---\n")
    with pytest.raises(CommandError) as caught:
        sync(tmp_path)
    assert "02-second.md" in str(caught.value)
    assert "nothing changed" in str(caught.value)
    assert Lesson.objects.get().title == "First lesson"


def test_the_shipped_course_syncs(db, settings):
    call_command("sync_lessons", stdout=io.StringIO())
    assert Module.objects.active().count() == 8
    assert Lesson.objects.active().count() >= 24
