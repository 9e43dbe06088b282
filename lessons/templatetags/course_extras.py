from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def visible_token(text: str) -> str:
    """A token's text with its invisible parts shown: a leading space as ␣, a newline as ↵."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


@register.filter
def percent(p: float) -> str:
    value = 100 * float(p)
    if value >= 10:
        return f"{value:.0f}%"
    if value >= 0.1:
        return f"{value:.1f}%"
    return "<0.1%"


@register.filter
def times(count: int) -> range:
    """0, 1, ..., count - 1: `{% for i in 30|times %}` (the template language has no range)."""
    return range(int(count))
