"""lessons.loader: the Markdown course is checked, every error names its file (and line)."""

from __future__ import annotations

import pytest

from lessons.loader import ContentErrors, ExerciseSpec, load_course
from tests.factories import lesson_md, module_md, small_course, write_tree


def errors_for(root) -> list[str]:
    with pytest.raises(ContentErrors) as caught:
        load_course(root)
    return [str(error) for error in caught.value.errors]


def test_the_shipped_course_loads_without_errors(real_course):
    lessons = [lesson for module in real_course for lesson in module.lessons]
    assert len(real_course) == 8
    assert len(lessons) >= 24
    assert all(lesson.exercises for lesson in lessons)
    assert all(lesson.quiz for lesson in lessons)


def test_it_reads_a_lesson_with_its_quiz_and_exercise(tmp_path):
    small_course(tmp_path, first=lesson_md())
    [module] = load_course(tmp_path)
    [lesson] = module.lessons
    assert (module.key, module.slug) == ("basics", "basics")
    assert (lesson.key, lesson.slug, lesson.minutes) == ("first", "first", 5)
    assert lesson.quiz[0].choices[0].correct and not lesson.quiz[0].choices[1].correct
    assert lesson.exercises == [ExerciseSpec("next-token", {"prompt": "The cat sat on the"})]
    assert '<h2 id="hello">Hello</h2>' in lesson.segments[0]


def test_malformed_front_matter_names_the_file_and_line(tmp_path):
    broken = "---\nkey: first\ntitle: Fine\nsummary: a: colon too many\nminutes: 5\n---\nBody\n"
    small_course(tmp_path, first=broken)
    [error] = errors_for(tmp_path)
    assert error.startswith(f"{tmp_path}/01-basics/01-first.md:4: front matter is not valid YAML")


def test_missing_front_matter_is_reported(tmp_path):
    small_course(tmp_path, first="# Just a heading\n")
    assert any("01-first.md:1: front matter missing" in error for error in errors_for(tmp_path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (lesson_md(key="Bad Key"), "key 'Bad Key' must be lowercase"),
        (lesson_md().replace("minutes: 5", "minutes: 500"), "minutes must be a whole number from 1 to 60"),
        (lesson_md().replace("minutes: 5", "minutes: 5\ncolour: red"), "unknown front matter field 'colour'"),
        (lesson_md().replace("title: First lesson\n", ""), "front matter lacks 'title'"),
        (lesson_md(exercise=""), "every lesson embeds at least one :::exercise block"),
        (lesson_md(exercise=":::exercise teleport\n:::\n"), "unknown exercise 'teleport'"),
        (lesson_md(exercise=":::exercise next-token\ncolour: red\n:::\n"), "bad option line 'colour: red'"),
        (lesson_md(exercise=":::exercise next-token\nprompt: hi\n"), "exercise block is not closed"),
        (lesson_md().replace("        correct: true\n", ""), "must have exactly one correct choice"),
        (lesson_md().replace("key: wrong", "key: right"), "uses a choice key twice"),
    ],
)
def test_bad_lessons_get_a_clear_error(tmp_path, text, message):
    small_course(tmp_path, first=text)
    errors = errors_for(tmp_path)
    assert any(message in error and "01-first.md" in error for error in errors), errors


def test_duplicate_lesson_keys_name_both_files(tmp_path):
    small_course(tmp_path, first=lesson_md(key="same"), second=lesson_md(key="same"))
    [error] = errors_for(tmp_path)
    assert "02-second.md" in error and "01-first.md" in error and "'same'" in error


def test_badly_named_files_and_folders_are_refused(tmp_path):
    write_tree(
        tmp_path,
        {
            "01-basics/module.md": module_md(),
            "01-basics/01-first.md": lesson_md(),
            "01-basics/notes.txt": "stray",
            "Bad Folder/module.md": module_md(key="other"),
        },
    )
    errors = errors_for(tmp_path)
    assert any("notes.txt: expected a lesson file" in error for error in errors)
    assert any("Bad Folder: expected a module folder" in error for error in errors)


def test_exercise_syntax_inside_a_code_block_is_shown_not_run(tmp_path):
    body = "```text\n:::exercise teleport\n:::\n```\n"
    small_course(tmp_path, first=lesson_md(body=body))
    [module] = load_course(tmp_path)
    lesson = module.lessons[0]
    assert [e.name for e in lesson.exercises] == ["next-token"]
    assert ":::exercise teleport" in lesson.segments[0]


def test_rendered_html_is_sanitized(tmp_path):
    body = (
        "## Safe\n\n<script>alert(1)</script>\n\n"
        '<p onclick="steal()">click</p>\n\n'
        "[a link](javascript:alert(1)) and [a good one](https://example.org)\n"
    )
    small_course(tmp_path, first=lesson_md(body=body))
    html = load_course(tmp_path)[0].lessons[0].segments[0]
    assert "<script" not in html and "alert(1)</script>" not in html
    assert "onclick" not in html
    assert "javascript:" not in html
    assert 'href="https://example.org"' in html


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    small_course(tmp_path, first=lesson_md())
    (tmp_path / "01-basics" / "01-first.md").write_bytes(b"---\nkey: caf\xe9\n---\n")
    assert any("01-first.md: the file is not valid UTF-8" in error for error in errors_for(tmp_path))
