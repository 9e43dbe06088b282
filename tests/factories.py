"""Small Markdown course files for the loader and sync tests."""

from __future__ import annotations

from pathlib import Path


def module_md(key: str = "basics", title: str = "Basics") -> str:
    return f"---\nkey: {key}\ntitle: {title}\nsummary: The first steps.\n---\nWelcome.\n"


def lesson_md(
    key: str = "first",
    title: str = "First lesson",
    body: str = "## Hello\n\nSome text.\n",
    quiz: str | None = None,
    exercise: str = ":::exercise next-token\nprompt: The cat sat on the\n:::\n",
) -> str:
    if quiz is None:
        quiz = (
            "quiz:\n"
            "  - key: q1\n"
            "    question: What comes next?\n"
            "    choices:\n"
            "      - key: right\n"
            "        text: A token\n"
            "        correct: true\n"
            "        why: It predicts one token at a time.\n"
            "      - key: wrong\n"
            "        text: A whole book\n"
            "        why: Far too much at once.\n"
        )
    return f"---\nkey: {key}\ntitle: {title}\nsummary: A short lesson.\nminutes: 5\n{quiz}---\n{body}\n{exercise}"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Writes {relative path: text} under root and returns root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def small_course(root: Path, **lessons: str) -> Path:
    """A one-module course under root; keyword names become lesson files 01-name.md, 02-..."""
    files = {"01-basics/module.md": module_md()}
    for number, (slug, text) in enumerate(lessons.items(), start=1):
        files[f"01-basics/{number:02d}-{slug.replace('_', '-')}.md"] = text
    return write_tree(root, files)
