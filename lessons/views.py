from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from uuid import UUID

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import redirect_to_login
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from lessons.exercises import EXERCISES
from lessons.models import ApiToken, Choice, Lesson, LessonProgress, Module, Question, QuizAnswer
from lessons.tokenize_view import tokenizer_choices
from workers.jobs.adapters import adapters_for

MAX_API_TOKENS = 5

# Live exercises that offer the learner's own LoRA adapters beside the base model.
MODEL_CHOICE = {"next-token", "generate", "adapter-compare"}


def get_lesson(slug: str) -> Lesson:
    """The active lesson with this slug, or 404. Slugs never reach the file system."""
    return get_object_or_404(Lesson.objects.active().select_related("module"), slug=slug)


def learner_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like login_required, but an htmx request is sent to the login page as a whole page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        next_url = request.htmx.current_url_abs_path if request.htmx else request.get_full_path()
        if request.htmx:
            return HttpResponseClientRedirect(redirect_to_login(next_url or "/")["Location"])
        return redirect_to_login(next_url)

    return wrapper


# --- The course outline --------------------------------------------------------------------------


@require_GET
def course(request: HttpRequest) -> HttpResponse:
    modules = list(Module.objects.active().prefetch_related("lessons"))
    progress = _progress_by_lesson(request)
    outline = []
    total = done = 0
    for module in modules:
        lessons = [lesson for lesson in module.lessons.all() if lesson.is_active]
        rows = [(lesson, progress.get(lesson.pk)) for lesson in lessons]
        module_done = sum(1 for _, p in rows if p and p.completed_at)
        outline.append({"module": module, "rows": rows, "done": module_done, "total": len(lessons)})
        total += len(lessons)
        done += module_done
    return render(
        request,
        "lessons/course.html",
        {
            "outline": outline,
            "done": done,
            "total": total,
            "percent": round(100 * done / total) if total else 0,
            "continue_lesson": _continue_lesson(progress),
            "started": bool(progress),
        },
    )


def _progress_by_lesson(request: HttpRequest) -> dict[int, LessonProgress]:
    if not request.user.is_authenticated:
        return {}
    return {p.lesson_id: p for p in LessonProgress.objects.filter(user=request.user)}


def _continue_lesson(progress: dict[int, LessonProgress]) -> Lesson | None:
    """Where the learner left off: the last lesson visited, or the next one if that is done."""
    lessons = list(Lesson.objects.active())
    if not lessons:
        return None
    active_ids = {lesson.pk for lesson in lessons}
    visited = [p for p in progress.values() if p.lesson_id in active_ids]
    if not visited:
        return lessons[0]
    last = max(visited, key=lambda p: p.last_visited_at)
    last_lesson = next(lesson for lesson in lessons if lesson.pk == last.lesson_id)
    if not last.completed_at:
        return last_lesson
    after = [lesson for lesson in lessons if lesson.order > last_lesson.order]
    not_done = [lesson for lesson in after if not (progress.get(lesson.pk) and progress[lesson.pk].completed_at)]
    return (not_done or after or [last_lesson])[0]


# --- A lesson ---------------------------------------------------------------------------------------


@require_GET
def lesson_page(request: HttpRequest, slug: str) -> HttpResponse:
    lesson = get_lesson(slug)
    progress = None
    if request.user.is_authenticated:
        progress, created = LessonProgress.objects.get_or_create(user=request.user, lesson=lesson)
        if not created:
            progress.last_visited_at = timezone.now()
            progress.save(update_fields=["last_visited_at"])

    siblings = list(lesson.module.lessons.active())
    done_ids = set()
    if request.user.is_authenticated:
        done_ids = set(
            LessonProgress.objects.filter(
                user=request.user, lesson__in=siblings, completed_at__isnull=False
            ).values_list("lesson_id", flat=True)
        )
    return render(
        request,
        "lessons/lesson.html",
        {
            "lesson": lesson,
            "segments": _segments(lesson),
            "questions": _questions_with_answers(request, lesson),
            "progress": progress,
            "siblings": [(sibling, sibling.pk in done_ids) for sibling in siblings],
            "tokenizer_choices": tokenizer_choices(request) if "tokenize" in lesson.exercise_names() else [],
            "adapter_choices": adapters_for(request.user) if MODEL_CHOICE & set(lesson.exercise_names()) else [],
            "api_tokens": request.user.api_tokens.usable() if request.user.is_authenticated else [],
            "api_url": request.build_absolute_uri("/v1/completions"),
            "previous": Lesson.objects.active().filter(order__lt=lesson.order).order_by("-order").first(),
            "next": Lesson.objects.active().filter(order__gt=lesson.order).order_by("order").first(),
        },
    )


def _segments(lesson: Lesson) -> list[dict]:
    segments = []
    for number, segment in enumerate(lesson.segments, start=1):
        if "exercise" in segment:
            exercise = EXERCISES.get(segment["exercise"])
            # uid: unique on the page, names the widget's elements and its websocket.
            uid = f"{lesson.key}-{number}"
            segments.append({"exercise": exercise, "options": segment.get("options", {}), "uid": uid})
        else:
            segments.append(segment)
    return segments


def _questions_with_answers(request: HttpRequest, lesson: Lesson) -> list[dict]:
    questions = list(lesson.questions.active().prefetch_related("choices"))
    answers = {}
    if request.user.is_authenticated:
        answers = {
            a.question_id: a
            for a in QuizAnswer.objects.filter(user=request.user, question__in=questions).select_related("choice")
        }
    return [_question_context(question, answers.get(question.pk)) for question in questions]


def _question_context(question: Question, answer: QuizAnswer | None, error: str = "") -> dict:
    return {
        "question": question,
        "choices": [choice for choice in question.choices.all() if choice.is_active],
        "answer": answer,
        "correct": bool(answer and answer.choice.is_correct),
        "error": error,
    }


@require_POST
@learner_required
def mark_done(request: HttpRequest, slug: str) -> HttpResponse:
    lesson = get_lesson(slug)
    progress, _ = LessonProgress.objects.get_or_create(user=request.user, lesson=lesson)
    progress.completed_at = timezone.now() if request.POST.get("done", "1") == "1" else None
    progress.save(update_fields=["completed_at"])
    if request.htmx:
        return render(request, "lessons/_done_button.html", {"lesson": lesson, "progress": progress})
    return redirect(lesson)


@require_POST
@learner_required
def answer_question(request: HttpRequest, slug: str, question_key: str) -> HttpResponse:
    lesson = get_lesson(slug)
    question = get_object_or_404(lesson.questions.active(), key=question_key)
    choice = Choice.objects.active().filter(question=question, key=request.POST.get("choice", "")).first()
    if choice is None:
        # No choice picked, or a key that is not one of this question's: a tampered form.
        previous = QuizAnswer.objects.filter(user=request.user, question=question).first()
        error = (
            "Pick one of the answers above."
            if not request.POST.get("choice")
            else ("That answer does not belong to this question. Reload the page and try again.")
        )
        context = {"q": _question_context(question, previous, error), "lesson": lesson}
        return render(request, "lessons/_question.html", context, status=400)

    answer, created = QuizAnswer.objects.get_or_create(
        user=request.user, question=question, defaults={"choice": choice}
    )
    if not created:
        answer.choice = choice
        answer.attempts = F("attempts") + 1
        answer.answered_at = timezone.now()
        answer.save(update_fields=["choice", "attempts", "answered_at"])
        answer.refresh_from_db()
    quiz_complete = _complete_if_quiz_passed(request, lesson)

    if request.htmx:
        context = {"q": _question_context(question, answer), "lesson": lesson, "quiz_complete": quiz_complete}
        return render(request, "lessons/_question.html", context)
    return redirect(f"{lesson.get_absolute_url()}#q-{question.key}")


def _complete_if_quiz_passed(request: HttpRequest, lesson: Lesson) -> bool:
    """Marks the lesson done once every question is answered correctly. True if it just did."""
    questions = lesson.questions.active()
    right = QuizAnswer.objects.filter(user=request.user, question__in=questions, choice__is_correct=True).count()
    if right < questions.count():
        return False
    LessonProgress.objects.get_or_create(user=request.user, lesson=lesson)
    # A conditional update: of two answers racing to complete the quiz, one reports it.
    pending = LessonProgress.objects.filter(user=request.user, lesson=lesson, completed_at__isnull=True)
    return bool(pending.update(completed_at=timezone.now()))


# --- Accounts -----------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}, request.is_secure()):
        next_url = ""
    if request.user.is_authenticated:
        return redirect(next_url or "course")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(next_url or "course")
    return render(request, "registration/signup.html", {"form": form, "next": next_url})


@require_GET
@login_required
def account(request: HttpRequest) -> HttpResponse:
    return _account_page(request)


def _account_page(request: HttpRequest, new_key: str = "", error: str = "") -> HttpResponse:
    completed = LessonProgress.objects.filter(user=request.user, completed_at__isnull=False, lesson__is_active=True)
    context = {
        "completed": completed.count(),
        "total": Lesson.objects.active().count(),
        "tokens": request.user.api_tokens.usable(),
        "new_key": new_key,
        "error": error,
        "api_url": request.build_absolute_uri("/v1/completions"),
    }
    return render(request, "accounts/account.html", context, status=400 if error else 200)


def _tokens_partial(request: HttpRequest, new_key: str = "", error: str = "") -> HttpResponse:
    if not request.htmx:
        return _account_page(request, new_key, error)
    context = {"tokens": request.user.api_tokens.usable(), "new_key": new_key, "error": error}
    return render(request, "accounts/_api_tokens.html", context, status=400 if error else 200)


@require_POST
@login_required
def create_api_token(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    if not name or len(name) > 60:
        return _tokens_partial(request, error="Give the token a name of 1 to 60 characters, such as 'laptop'.")
    if request.user.api_tokens.usable().count() >= MAX_API_TOKENS:
        return _tokens_partial(request, error=f"You have {MAX_API_TOKENS} tokens already: revoke one first.")
    _, key = ApiToken.issue(request.user, name)
    # The key is shown this once, in the response; only its hash is kept.
    return _tokens_partial(request, new_key=key)


@require_POST
@login_required
def revoke_api_token(request: HttpRequest, code: UUID) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.usable(), code=code, user=request.user)
    token.revoke()
    return _tokens_partial(request) if request.htmx else redirect("account")
