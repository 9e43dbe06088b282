"""Reads the course from Markdown files and checks every part of it.

Plain Python, no Django: `load_course(path)` returns the modules with their lessons, quizzes and
rendered, sanitized HTML, or raises `ContentErrors` listing every problem found, each naming the
file and, where there is one, the line. docs/writing-lessons.md describes the format.

Run `python -m lessons.loader lessons/content` to check the files without touching a database.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import markdown
import nh3
import yaml

from lessons.exercises import EXERCISES

KEY_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MODULE_DIR_RE = re.compile(r"^(\d{2})-([a-z0-9]+(?:-[a-z0-9]+)*)$")
LESSON_FILE_RE = re.compile(r"^(\d{2})-([a-z0-9]+(?:-[a-z0-9]+)*)\.md$")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
EXERCISE_OPEN_RE = re.compile(r"^:::exercise(?:\s+(\S+))?\s*$")
PLACEHOLDER = "EXERCISE-SLOT-{}"
PLACEHOLDER_RE = re.compile(r"<p>EXERCISE-SLOT-(\d+)</p>")

MAX_QUESTIONS = 5
MAX_FILE_BYTES = 200_000

ALLOWED_TAGS = {
    "a", "blockquote", "br", "code", "em", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol",
    "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul", "del", "sub", "sup",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "h2": {"id"},
    "h3": {"id"},
    "h4": {"id"},
}


@dataclass
class ContentError:
    path: Path
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"


class ContentErrors(Exception):
    def __init__(self, errors: list[ContentError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(error) for error in errors))


@dataclass
class ChoiceSpec:
    key: str
    text: str
    correct: bool
    why: str


@dataclass
class QuestionSpec:
    key: str
    text: str
    choices: list[ChoiceSpec]


@dataclass
class ExerciseSpec:
    name: str
    options: dict[str, str]


@dataclass
class LessonSpec:
    key: str
    slug: str
    title: str
    summary: str
    minutes: int
    path: Path
    # The page body: HTML strings and ExerciseSpecs in reading order.
    segments: list[str | ExerciseSpec]
    quiz: list[QuestionSpec]

    @property
    def exercises(self) -> list[ExerciseSpec]:
        return [segment for segment in self.segments if isinstance(segment, ExerciseSpec)]


@dataclass
class ModuleSpec:
    key: str
    slug: str
    title: str
    summary: str
    intro_html: str
    path: Path
    lessons: list[LessonSpec] = field(default_factory=list)


def load_course(root: Path) -> list[ModuleSpec]:
    """Every module under `root`, in order, or ContentErrors naming every problem."""
    root = Path(root)
    errors: list[ContentError] = []
    if not root.is_dir():
        raise ContentErrors([ContentError(root, "the lessons folder does not exist")])

    modules: list[ModuleSpec] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        match = MODULE_DIR_RE.match(entry.name)
        if not entry.is_dir() or not match:
            errors.append(ContentError(entry, "expected a module folder named like 01-some-slug"))
            continue
        module = _load_module(entry, match.group(2), errors)
        if module:
            modules.append(module)

    _check_unique(
        errors, [(m.key, m.path, "module key") for m in modules] + [(m.slug, m.path, "module slug") for m in modules]
    )
    lessons = [lesson for module in modules for lesson in module.lessons]
    _check_unique(
        errors,
        [(lesson.key, lesson.path, "lesson key") for lesson in lessons]
        + [(lesson.slug, lesson.path, "lesson slug") for lesson in lessons],
    )
    if not modules and not errors:
        errors.append(ContentError(root, "no modules found"))
    if errors:
        raise ContentErrors(errors)
    return modules


def _check_unique(errors: list[ContentError], items: list[tuple[str, Path, str]]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for value, path, what in items:
        if (what, value) in seen:
            errors.append(ContentError(path, f"{what} {value!r} is already used by {seen[what, value]}"))
        else:
            seen[what, value] = path


def _load_module(folder: Path, slug: str, errors: list[ContentError]) -> ModuleSpec | None:
    module_file = folder / "module.md"
    if not module_file.is_file():
        errors.append(ContentError(folder, "module.md is missing"))
        return None
    parsed = _read_front_matter(module_file, errors)
    module = None
    if parsed:
        meta, body, body_line = parsed
        if _check_fields(module_file, meta, required={"key", "title", "summary"}, optional=set(), errors=errors):
            html, _ = _render_body(module_file, body, body_line, errors, allow_exercises=False)
            module = ModuleSpec(
                key=meta["key"],
                slug=slug,
                title=meta["title"],
                summary=meta["summary"],
                intro_html="".join(html),
                path=module_file,
            )

    lesson_files = 0
    for entry in sorted(folder.iterdir()):
        if entry.name == "module.md" or entry.name.startswith("."):
            continue
        match = LESSON_FILE_RE.match(entry.name)
        if not entry.is_file() or not match:
            errors.append(ContentError(entry, "expected a lesson file named like 01-some-slug.md"))
            continue
        lesson_files += 1
        lesson = _load_lesson(entry, match.group(2), errors)
        if lesson and module:
            module.lessons.append(lesson)
    if not lesson_files:
        errors.append(ContentError(folder, "the module has no lessons"))
    return module


def _load_lesson(path: Path, slug: str, errors: list[ContentError]) -> LessonSpec | None:
    parsed = _read_front_matter(path, errors)
    if not parsed:
        return None
    meta, body, body_line = parsed
    if not _check_fields(path, meta, required={"key", "title", "summary", "minutes"}, optional={"quiz"}, errors=errors):
        return None
    minutes = meta["minutes"]
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 60:
        errors.append(ContentError(path, f"minutes must be a whole number from 1 to 60, not {minutes!r}"))
        return None
    quiz = _parse_quiz(path, meta.get("quiz") or [], errors)
    segments, exercises = _render_body(path, body, body_line, errors, allow_exercises=True)
    if quiz is None or segments is None:
        return None
    if not exercises:
        errors.append(ContentError(path, "every lesson embeds at least one :::exercise block"))
        return None
    return LessonSpec(
        key=meta["key"],
        slug=slug,
        title=meta["title"],
        summary=meta["summary"],
        minutes=minutes,
        path=path,
        segments=segments,
        quiz=quiz,
    )


def _read_front_matter(path: Path, errors: list[ContentError]) -> tuple[dict[str, Any], str, int] | None:
    """(front matter, body, line number where the body starts) or None after recording errors."""
    if path.stat().st_size > MAX_FILE_BYTES:
        errors.append(ContentError(path, f"the file is larger than {MAX_FILE_BYTES:,} bytes"))
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        errors.append(ContentError(path, f"the file is not valid UTF-8 (byte {exc.start})"))
        return None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        errors.append(ContentError(path, "front matter missing: the file must start with a line '---'", 1))
        return None
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        errors.append(ContentError(path, "front matter is not closed by a line '---'", 1))
        return None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(ContentError(path, f"front matter is not valid YAML: {problem}", line))
        return None
    if not isinstance(meta, dict):
        errors.append(ContentError(path, "front matter must be a mapping of names to values", 2))
        return None
    return meta, "\n".join(lines[end + 1 :]), end + 2


def _check_fields(
    path: Path, meta: dict[str, Any], required: set[str], optional: set[str], errors: list[ContentError]
) -> bool:
    ok = True
    for name in sorted(required - meta.keys()):
        errors.append(ContentError(path, f"front matter lacks {name!r}"))
        ok = False
    for name in sorted(meta.keys() - required - optional):
        errors.append(ContentError(path, f"unknown front matter field {name!r}"))
        ok = False
    for name in {"title", "summary"} & meta.keys():
        if not isinstance(meta[name], str) or not meta[name].strip():
            errors.append(ContentError(path, f"{name!r} must be non-empty text"))
            ok = False
    if "key" in meta and not (isinstance(meta["key"], str) and KEY_RE.match(meta["key"])):
        errors.append(ContentError(path, f"key {meta['key']!r} must be lowercase letters, digits and hyphens"))
        ok = False
    return ok


def _parse_quiz(path: Path, raw: Any, errors: list[ContentError]) -> list[QuestionSpec] | None:
    before = len(errors)

    def problem(message: str) -> None:
        errors.append(ContentError(path, f"quiz: {message}"))

    if not isinstance(raw, list):
        problem("must be a list of questions")
        return None
    if len(raw) > MAX_QUESTIONS:
        problem(f"at most {MAX_QUESTIONS} questions, found {len(raw)}")
    questions: list[QuestionSpec] = []
    question_keys: set[str] = set()
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or not {"key", "question", "choices"} <= item.keys():
            problem(f"question {number} needs key, question and choices")
            continue
        key = item["key"]
        if not isinstance(key, str) or not KEY_RE.match(key):
            problem(f"question {number} has a bad key {key!r}")
            continue
        if key in question_keys:
            problem(f"question key {key!r} is used twice")
        question_keys.add(key)
        unknown = item.keys() - {"key", "question", "choices"}
        if unknown:
            problem(f"question {key!r} has unknown fields {sorted(unknown)}")
        choices_raw = item["choices"]
        if not isinstance(choices_raw, list) or not 2 <= len(choices_raw) <= 5:
            problem(f"question {key!r} needs 2 to 5 choices")
            continue
        choices: list[ChoiceSpec] = []
        for position, choice in enumerate(choices_raw, start=1):
            if not isinstance(choice, dict) or not {"key", "text", "why"} <= choice.keys():
                problem(f"question {key!r}, choice {position} needs key, text and why")
                continue
            if choice.keys() - {"key", "text", "why", "correct"}:
                problem(f"question {key!r}, choice {position} has unknown fields")
            if not isinstance(choice["key"], str) or not KEY_RE.match(choice["key"]):
                problem(f"question {key!r}, choice {position} has a bad key {choice['key']!r}")
                continue
            correct = choice.get("correct", False)
            if not isinstance(correct, bool):
                problem(f"question {key!r}, choice {choice['key']!r}: correct must be true or false")
            choices.append(ChoiceSpec(choice["key"], str(choice["text"]), correct is True, str(choice["why"])))
        if len({c.key for c in choices}) != len(choices):
            problem(f"question {key!r} uses a choice key twice")
        if sum(c.correct for c in choices) != 1:
            problem(f"question {key!r} must have exactly one correct choice")
        questions.append(QuestionSpec(key, str(item["question"]), choices))
    return questions if len(errors) == before else None


def _render_body(
    path: Path, body: str, first_line: int, errors: list[ContentError], allow_exercises: bool
) -> tuple[list[str | ExerciseSpec] | None, list[ExerciseSpec]]:
    """Markdown to sanitized HTML, split around the exercise blocks."""
    before = len(errors)
    exercises: list[ExerciseSpec] = []
    kept: list[str] = []
    lines = body.split("\n")
    in_fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE_RE.match(line)
        if fence and (in_fence is None or fence.group(1) == in_fence):
            in_fence = None if in_fence else fence.group(1)
        opener = None if in_fence else EXERCISE_OPEN_RE.match(line)
        if not opener:
            kept.append(line)
            i += 1
            continue
        line_no = first_line + i
        try:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == ":::")
        except StopIteration:
            errors.append(ContentError(path, "exercise block is not closed by a line ':::'", line_no))
            break
        exercise = _parse_exercise(path, opener.group(1), lines[i + 1 : end], line_no, errors)
        if exercise and not allow_exercises:
            errors.append(ContentError(path, "exercises belong in lessons, not in module.md", line_no))
        elif exercise:
            kept.extend(["", PLACEHOLDER.format(len(exercises)), ""])
            exercises.append(exercise)
        i = end + 1

    if len(errors) != before:
        return None, exercises
    html = markdown.markdown("\n".join(kept), extensions=["fenced_code", "tables", "sane_lists", "toc"])
    html = nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https", "mailto"})
    segments: list[str | ExerciseSpec] = []
    for index, part in enumerate(PLACEHOLDER_RE.split(html)):
        if index % 2:
            segments.append(exercises[int(part)])
        elif part.strip():
            segments.append(part.strip())
    return segments, exercises


def _parse_exercise(
    path: Path, name: str | None, option_lines: list[str], line_no: int, errors: list[ContentError]
) -> ExerciseSpec | None:
    if not name:
        errors.append(ContentError(path, "name the exercise: ':::exercise next-token'", line_no))
        return None
    exercise = EXERCISES.get(name)
    if exercise is None:
        known = ", ".join(sorted(EXERCISES))
        errors.append(ContentError(path, f"unknown exercise {name!r}; known: {known}", line_no))
        return None
    options: dict[str, str] = {}
    for offset, raw in enumerate(option_lines, start=1):
        if not raw.strip():
            continue
        option, sep, value = raw.partition(":")
        option = option.strip()
        if not sep or option not in exercise.options:
            allowed = ", ".join(exercise.options) or "none"
            errors.append(
                ContentError(
                    path, f"exercise {name!r}: bad option line {raw.strip()!r} (options: {allowed})", line_no + offset
                )
            )
            continue
        options[option] = value.strip()
    return ExerciseSpec(name, options)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "content"
    try:
        modules = load_course(root)
    except ContentErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{len(exc.errors)} problem(s) found", file=sys.stderr)
        return 1
    lessons = sum(len(module.lessons) for module in modules)
    questions = sum(len(lesson.quiz) for module in modules for lesson in module.lessons)
    print(f"ok: {len(modules)} modules, {lessons} lessons, {questions} quiz questions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
