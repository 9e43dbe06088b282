"""The tokenizer view of the lessons: text in, coloured tokens out. Runs in the web process.

`tokenizers` is a small Rust library, so no model server is needed: this exercise works even
when the model is down.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from workers.inference.tokenizer import course_tokenizer, load_tokenizer
from workers.jobs.tokenizer import trained_tokenizers_for

MAX_CHARS = 5000
COLOURS = 6


def tokenizer_choices(request: HttpRequest) -> list[tuple[str, str]]:
    """(value, label) for the select: the course model's tokenizer, then the learner's own."""
    choices = [("course", "The course model (SmolLM2, 49,152 tokens)")]
    choices += [(str(code), label) for label, code, _ in trained_tokenizers_for(request.user)]
    return choices


@require_GET
def tokenize(request: HttpRequest) -> HttpResponse:
    text = request.GET.get("text", "")
    widget = request.GET.get("widget", "tokenizer")
    choice = request.GET.get("tokenizer", "course")
    error = ""
    if len(text) > MAX_CHARS:
        error = f"That text is {len(text):,} characters long; the tokenizer view takes up to {MAX_CHARS:,}."
        text = ""
    tokenizer = course_tokenizer()
    if choice != "course":
        mine = {str(code): path for _, code, path in trained_tokenizers_for(request.user)}
        if choice not in mine:
            error = "That tokenizer is not one of yours, or it is gone: showing the course model's."
            choice = "course"
        else:
            tokenizer = load_tokenizer(mine[choice].parent)  # cached per folder
    encoding = tokenizer.encode(text, add_special_tokens=False)
    tokens = [
        {"id": token_id, "text": text[start:end], "colour": n % COLOURS}
        for n, (token_id, (start, end)) in enumerate(zip(encoding.ids, encoding.offsets, strict=True))
    ]
    context = {
        "widget": widget if widget.replace("-", "").isalnum() else "tokenizer",
        "tokens": tokens,
        "count": len(tokens),
        "chars": len(text),
        "per_token": len(text) / len(tokens) if tokens else 0,
        "error": error,
    }
    if request.htmx:
        return render(request, "exercises/_tokens.html", context)
    return render(
        request,
        "lessons/tokenizer_page.html",
        {**context, "text": text, "choices": tokenizer_choices(request), "choice": choice},
    )
