"""Writes the course read by lessons.loader into the database, in one transaction."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from django.db import models, transaction

from lessons.loader import ExerciseSpec, LessonSpec, ModuleSpec
from lessons.models import Choice, Lesson, Module, Question


def sync_course(modules: list[ModuleSpec]) -> Counter[str]:
    """Create, update or hide rows to match `modules`. Returns counts such as "lessons created".

    Rows are matched by key, never by title or position, so learners' progress and answers stay
    attached. Whatever the files no longer have is hidden (is_active=False), never deleted.
    """
    report: Counter[str] = Counter()
    with transaction.atomic():
        # Slugs are unique and may move between rows (a lesson renamed into another's old
        # name); park them on unique placeholders first so no update collides mid-way.
        for model in (Module, Lesson):
            model.objects.update(
                slug=models.functions.Concat(models.Value("parked-"), "id", output_field=models.SlugField())
            )

        seen_modules, seen_lessons = [], []
        order = 0
        for module_order, spec in enumerate(modules, start=1):
            module = _upsert(
                Module,
                report,
                "modules",
                {"key": spec.key},
                slug=spec.slug,
                title=spec.title,
                summary=spec.summary,
                intro_html=spec.intro_html,
                order=module_order,
                is_active=True,
            )
            seen_modules.append(module.pk)
            for lesson_spec in spec.lessons:
                order += 1
                lesson = _sync_lesson(module, lesson_spec, order, report)
                seen_lessons.append(lesson.pk)

        report["modules hidden"] += Module.objects.active().exclude(pk__in=seen_modules).update(is_active=False)
        report["lessons hidden"] += Lesson.objects.active().exclude(pk__in=seen_lessons).update(is_active=False)
    return report


def _sync_lesson(module: Module, spec: LessonSpec, order: int, report: Counter[str]) -> Lesson:
    lesson = _upsert(
        Lesson,
        report,
        "lessons",
        {"key": spec.key},
        module=module,
        slug=spec.slug,
        title=spec.title,
        summary=spec.summary,
        minutes=spec.minutes,
        order=order,
        segments=[_segment(segment) for segment in spec.segments],
        source_path=str(spec.path),
        is_active=True,
    )
    seen_questions = []
    for question_order, question_spec in enumerate(spec.quiz, start=1):
        question = _upsert(
            Question,
            report,
            "questions",
            {"lesson": lesson, "key": question_spec.key},
            text=question_spec.text,
            order=question_order,
            is_active=True,
        )
        seen_questions.append(question.pk)
        seen_choices = []
        for choice_order, choice_spec in enumerate(question_spec.choices, start=1):
            choice = _upsert(
                Choice,
                report,
                "choices",
                {"question": question, "key": choice_spec.key},
                text=choice_spec.text,
                is_correct=choice_spec.correct,
                explanation=choice_spec.why,
                order=choice_order,
                is_active=True,
            )
            seen_choices.append(choice.pk)
        report["choices hidden"] += question.choices.active().exclude(pk__in=seen_choices).update(is_active=False)
    report["questions hidden"] += lesson.questions.active().exclude(pk__in=seen_questions).update(is_active=False)
    return lesson


def _segment(segment: str | ExerciseSpec) -> dict:
    if isinstance(segment, ExerciseSpec):
        return {"exercise": segment.name, "options": asdict(segment)["options"]}
    return {"html": segment}


def _upsert(model: type[models.Model], report: Counter[str], label: str, lookup: dict, **values) -> models.Model:
    """get-or-create by `lookup`; save only the fields that changed, and count what happened."""
    obj = model.objects.filter(**lookup).first()
    if obj is None:
        obj = model.objects.create(**lookup, **values)
        report[f"{label} created"] += 1
        return obj
    changed = [name for name, value in values.items() if getattr(obj, name) != value]
    # The slug was parked by sync_course; restoring it alone is not a change worth reporting.
    if changed == ["slug"] or not changed:
        report[f"{label} unchanged"] += 1
    else:
        report[f"{label} updated"] += 1
    if changed:
        for name in changed:
            setattr(obj, name, values[name])
        if changed != ["slug"] and hasattr(obj, "updated_at"):
            changed.append("updated_at")  # auto_now is saved only when named
        obj.save(update_fields=changed)
    return obj
