"""A learner in Chromium: sign up, read a lesson, answer its quiz, see the progress change."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD


def lesson_spec(real_course, slug: str):
    return next(lesson for module in real_course for lesson in module.lessons if lesson.slug == slug)


def test_sign_up_read_a_lesson_answer_the_quiz_and_see_progress(page: Page, server, real_course, console_errors):
    total = sum(len(module.lessons) for module in real_course)
    page.goto(server + "/")
    expect(page.get_by_role("heading", name="How large language models work")).to_be_visible()

    # Sign up from the header; the form brings the learner back to the course page.
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Sign up").click()
    page.get_by_label("Username").fill("learner1")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_test_id("overall-progress")).to_contain_text(f"0 of {total} lessons done")

    # Read the first lesson: prose, the live exercise, the quiz.
    page.get_by_role("link", name="Predicting the next word").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Predicting the next word")
    expect(page.locator(".exercise.next-token")).to_contain_text("Complete the sentence")

    # Answering swaps the question in place, without a page load: this marker would vanish.
    page.evaluate("window.__stillTheSamePage = true")
    lesson = lesson_spec(real_course, "predicting-the-next-word")
    for number, question in enumerate(lesson.quiz):
        form = page.locator(f"#q-{question.key}")
        wrong = next(choice for choice in question.choices if not choice.correct)
        right = next(choice for choice in question.choices if choice.correct)
        if number == 0:
            form.locator(f"input[value='{wrong.key}']").check()
            form.get_by_role("button", name="Check answer").click()
            expect(page.locator(f"#q-{question.key} [data-testid=result]")).to_have_text(
                "Not yet: pick another answer."
            )
            page.locator(f"#q-{question.key} input[value='{right.key}']").check()
            page.locator(f"#q-{question.key}").get_by_role("button", name="Try again").click()
        else:
            form.locator(f"input[value='{right.key}']").check()
            form.get_by_role("button", name="Check answer").click()
        expect(page.locator(f"#q-{question.key} [data-testid=result]")).to_have_text("Correct!")
    expect(page.get_by_text("Quiz complete: this lesson is now marked as done.")).to_be_visible()
    assert page.evaluate("window.__stillTheSamePage") is True

    # The course page now counts the lesson, and "continue" points at the next one.
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Course").click()
    expect(page.get_by_test_id("overall-progress")).to_contain_text(f"1 of {total} lessons done")
    expect(page.get_by_test_id("continue")).to_have_text(re.compile(r"Continue: The slot machine"))

    # Mark the next lesson done with the button, and undo it.
    page.get_by_test_id("continue").click()
    page.get_by_test_id("mark-done").click()
    expect(page.get_by_test_id("done-state")).to_contain_text("Lesson done")
    page.get_by_role("button", name="Mark as not done").click()
    expect(page.get_by_test_id("mark-done")).to_be_visible()

    assert console_errors == []


def test_a_visitor_reads_on_a_phone_sized_screen(page: Page, server, console_errors):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server + "/learn/the-slot-machine/")
    expect(page.get_by_role("heading", level=1)).to_have_text("The slot machine")
    expect(page.get_by_text("to answer the quiz and keep your progress")).to_be_visible()
    # Nothing is wider than the screen, not even lessons with wide code blocks and tables.
    for slug in ["the-slot-machine", "train-your-own-tokenizer", "the-toolkit", "a-short-history"]:
        page.goto(f"{server}/learn/{slug}/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, slug
    assert console_errors == []
