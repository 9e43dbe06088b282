"""What the live exercise widgets do with a learner's clicks, and how they show the model's replies.

Called by `ExerciseConsumer`. Every message carries the widget's whole state (its form), so each
handler rebuilds what it needs from the message; `context` travels with a model request and
says what to do with its events.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from workers.inference.sampling import BadRequest
from workers.inference.tokenizer import course_tokenizer

if TYPE_CHECKING:
    from lessons.consumers import ExerciseConsumer

MAX_CHOSEN = 200
KEEP_GOING_TOKENS = 40
CANDIDATES = 8
SAMPLER_FIELDS = ("temperature", "top_k", "top_p", "seed")


def _ids(raw: Any) -> list[int]:
    if not raw:
        return []
    if not isinstance(raw, str) or not re.fullmatch(r"\d+(,\d+)*", raw):
        raise BadRequest("the chosen tokens are garbled: reset the exercise")
    ids = [int(part) for part in raw.split(",")]
    if len(ids) > MAX_CHOSEN:
        raise BadRequest(f"at most {MAX_CHOSEN} tokens: reset or undo")
    return ids


def _sampler(message: dict[str, Any]) -> dict[str, Any]:
    return {name: message.get(name, "") for name in SAMPLER_FIELDS}


def _pieces(ids: list[int]) -> list[dict[str, Any]]:
    tokenizer = course_tokenizer()
    return [{"id": i, "text": tokenizer.decode([i])} for i in ids]


def _prompt(message: dict[str, Any]) -> str:
    prompt = message.get("prompt", "")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("type a prompt first")
    return prompt


async def handle(consumer: ExerciseConsumer, message: dict[str, Any]) -> None:
    exercise = message.get("exercise")
    action = message.get("action") or ("choose" if message.get("choose") else "")
    widget = consumer.widget
    # A new action replaces whatever this widget was still waiting for.
    for request_id, context in list(consumer.requests.items()):
        if context.get("widget") == widget:
            await consumer.cancel_request(request_id)
            if context.get("streaming"):
                if context["kind"] == "next-token":
                    # Keep what the model wrote so far: the next action starts from there.
                    message["chosen"] = ",".join(map(str, context["chosen"] + context["generated"]))
                await _finish_stream(consumer, context, "stopped")
    if action == "stop":
        return
    if exercise == "next-token":
        await _next_token(consumer, widget, action, message)
    elif exercise == "generate":
        await _generate(consumer, widget, action, message)
    elif exercise == "inside-the-model":
        await _inside(consumer, widget, message)
    elif exercise == "adapter-compare":
        await _compare(consumer, widget, action, message)
    else:
        raise BadRequest("this exercise does not talk to the model")


# --- Complete the sentence ----------------------------------------------------------------------------


async def _next_token(consumer: ExerciseConsumer, widget: str, action: str, message: dict[str, Any]) -> None:
    prompt = _prompt(message)
    chosen = _ids(message.get("chosen", ""))
    if action == "choose":
        token = str(message.get("choose", ""))
        if not token.isdigit():
            raise BadRequest("pick one of the candidates")
        chosen.append(int(token))
    elif action == "undo":
        chosen = chosen[:-1]
    elif action == "reset":
        chosen = []
    elif action not in {"candidates", "sample", "go", "score"}:
        raise BadRequest(f"unknown action {action!r}")

    streaming = action in {"sample", "go"}
    context = {
        "widget": widget,
        "kind": "next-token",
        "prompt": prompt,
        "chosen": chosen,
        "generated": [],
        "streaming": streaming,
        "adapter": await consumer.adapter(message.get("model")),
    }
    await consumer.send_html(
        "exercises/_nt_sentence.html", {"widget": widget, "prompt": prompt, "pieces": _pieces(chosen), "chosen": chosen}
    )
    if action == "score":
        if not chosen:
            raise BadRequest("add at least one token to the sentence before scoring it")
        context.update(step="score-mine")
        params = {"max_tokens": 0}
        await consumer.submit(
            context, prompt, params, mode="score", continuation_ids=chosen, adapter=context["adapter"]
        )
        return
    max_tokens = {"sample": 1, "go": KEEP_GOING_TOKENS}.get(action, 0)
    params = {**_sampler(message), "max_tokens": max_tokens, "candidates": CANDIDATES}
    if max_tokens:
        await consumer.send_html("exercises/_nt_busy.html", {"widget": widget, "streaming": action == "go"})
    await consumer.submit(context, prompt, params, prompt_ids=chosen, adapter=context["adapter"])


async def _finish_stream(consumer: ExerciseConsumer, context: dict[str, Any], reason: str) -> None:
    """The sentence now ends with what the model wrote: store it in the widget's form."""
    if context.get("kind") == "next-token":
        chosen = context["chosen"] + context["generated"]
        await consumer.send_html(
            "exercises/_nt_sentence.html",
            {"widget": context["widget"], "prompt": context["prompt"], "pieces": _pieces(chosen), "chosen": chosen},
        )
        await consumer.send_html("exercises/_nt_busy.html", {"widget": context["widget"], "done": reason})
    elif context.get("kind") == "generate":
        await consumer.send_html(
            "exercises/_gen_done.html", {"widget": context["widget"], "reason": reason, "usage": {}}
        )
    elif context.get("kind") == "compare":
        done = {"widget": context["widget"], "side": context["side"], "reason": reason, "usage": {}}
        await consumer.send_html("exercises/_cmp_done.html", done)


# --- Generation playground ----------------------------------------------------------------------------


async def _generate(consumer: ExerciseConsumer, widget: str, action: str, message: dict[str, Any]) -> None:
    if action != "generate":
        raise BadRequest(f"unknown action {action!r}")
    prompt = _prompt(message)
    params = {**_sampler(message), "max_tokens": message.get("max_tokens", "")}
    context = {"widget": widget, "kind": "generate", "count": 0, "streaming": True}
    chat = message.get("chat") in {"on", "true", "1", True}
    adapter = await consumer.adapter(message.get("model"))
    if await consumer.submit(context, prompt, params, chat=chat, adapter=adapter):
        await consumer.send_html("exercises/_gen_start.html", {"widget": widget, "prompt": prompt, "chat": chat})


# --- Your adapter against the base model ------------------------------------------------------------------

COMPARE_CANDIDATES = 20  # the most a request may ask for: "where they differ" looks among these
COMPARE_SHOWN = 8
SIDES = ("base", "adapter")


async def _compare(consumer: ExerciseConsumer, widget: str, action: str, message: dict[str, Any]) -> None:
    """The same prompt on the base model and on the learner's adapter, streamed side by side.

    Four requests in four lanes of the learner (so none replaces another): each side's
    generation, and each side's next-token distribution for the prompt (max_tokens 0 with
    candidates: one forward pass). When both distributions are in, the tokens whose probability
    moved most are listed.
    """
    if action != "compare":
        raise BadRequest(f"unknown action {action!r}")
    prompt = _prompt(message)
    if not message.get("model"):
        raise BadRequest("choose one of your adapters to compare with the base model")
    adapter = await consumer.adapter(message.get("model"))
    chat = message.get("chat") in {"on", "true", "1", True}
    params = {**_sampler(message), "max_tokens": message.get("max_tokens", "")}
    shared: dict[str, Any] = {"first": {}}
    await consumer.send_html("exercises/_cmp_start.html", {"widget": widget, "prompt": prompt, "chat": chat})
    for side in SIDES:
        side_adapter = adapter if side == "adapter" else None
        context = {"widget": widget, "kind": "compare", "side": side, "streaming": True, "shared": shared}
        sent = await consumer.submit(context, prompt, params, lane=f"compare-{side}", chat=chat, adapter=side_adapter)
        if not sent:
            return
        probe = {**context, "streaming": False, "probe": True}
        first = {"max_tokens": 0, "candidates": COMPARE_CANDIDATES, "temperature": 1}
        await consumer.submit(probe, prompt, first, lane=f"compare-{side}-first", chat=chat, adapter=side_adapter)


async def _compare_event(consumer: ExerciseConsumer, kind: str, event: dict[str, Any], context: dict[str, Any]) -> None:
    widget, side = context["widget"], context["side"]
    if kind == "error":
        await consumer.error(event["error"], context)
    elif kind in {"queued", "started"} and not context.get("probe"):
        position = event["position"] if kind == "queued" else 0
        await consumer.send_html("exercises/_queued.html", {"widget": widget, "position": position})
    elif context.get("probe"):
        if kind == "candidates":
            context["shared"]["first"][side] = event["raw"]
            if len(context["shared"]["first"]) == len(SIDES):
                await consumer.send_html("exercises/_cmp_first.html", _differences(widget, context["shared"]["first"]))
    elif kind == "tokens":
        await consumer.send_html(
            "exercises/_cmp_tokens.html", {"widget": widget, "side": side, "tokens": event["tokens"]}
        )
    elif kind == "done":
        await consumer.send_html(
            "exercises/_cmp_done.html",
            {"widget": widget, "side": side, "reason": event["reason"], "usage": event.get("usage", {})},
        )


def _differences(widget: str, first: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Both sides' top candidates, and the tokens whose probability moved most between them.

    Each side reports its top 20; a token missing from one side's list had at most that list's
    smallest probability there, so its change is shown as "at least" that much.
    """
    tables = {side: {c["id"]: c for c in first[side]} for side in SIDES}
    floor = {side: min((c["p"] for c in first[side]), default=0.0) for side in SIDES}
    moved = []
    for token in set(tables["base"]) | set(tables["adapter"]):
        known = {side: token in tables[side] for side in SIDES}
        p = {side: tables[side][token]["p"] if known[side] else floor[side] for side in SIDES}
        text = (tables["base"].get(token) or tables["adapter"][token])["text"]
        change = p["adapter"] - p["base"]
        moved.append({"id": token, "text": text, "base": p["base"], "adapter": p["adapter"], "change": change,
                      "bound": not all(known.values()), "base_known": known["base"], "adapter_known": known["adapter"]})  # fmt: skip
    moved.sort(key=lambda row: abs(row["change"]), reverse=True)
    for row in moved:
        row["points"] = f"{100 * row['change']:+.1f} points"
    return {
        "widget": widget,
        "columns": [
            {"title": "Base model", "candidates": first["base"][:COMPARE_SHOWN]},
            {"title": "Your adapter", "candidates": first["adapter"][:COMPARE_SHOWN]},
        ],
        "moved": moved[:COMPARE_SHOWN],
        "same_top": bool(first["base"] and first["adapter"]) and first["base"][0]["id"] == first["adapter"][0]["id"],
    }


# --- Inside the model ------------------------------------------------------------------------------------

HEAT_SHADES = 10  # .heat-0 ... .heat-9 in course.css
# Shade i starts at weight (i/10)^2: square-root steps, because attention is often spread thin
# and a linear scale would leave most of the map blank.
HEAT_LEGEND = [{"shade": i, "label": f"{(i / HEAT_SHADES) ** 2:.0%}"} for i in range(HEAT_SHADES)]


async def _inside(consumer: ExerciseConsumer, widget: str, message: dict[str, Any]) -> None:
    prompt = _prompt(message)
    picked = [str(message.get(name, "")) for name in ("layer", "head")]
    if not all(value.isdigit() for value in picked):
        raise BadRequest("pick a layer and a head")
    layer, head = map(int, picked)
    # `shape` is what the page's pickers offer; the reply replaces them if the model differs.
    context = {"widget": widget, "kind": "inside-the-model", "shape": str(message.get("shape", ""))}
    if await consumer.submit(context, prompt, {}, mode="inspect", layer=layer, head=head):
        await consumer.send_html("exercises/_inside_status.html", {"widget": widget, "busy": True})


async def _inside_event(consumer: ExerciseConsumer, kind: str, event: dict[str, Any], context: dict[str, Any]) -> None:
    widget = context["widget"]
    if kind == "inspected":
        await consumer.send_html("exercises/_inside_result.html", _inside_view(widget, event, context["shape"]))
    elif kind == "done":
        status = {"widget": widget, "reason": event["reason"], "usage": event.get("usage", {})}
        await consumer.send_html("exercises/_inside_status.html", status)
    elif kind == "error":
        await consumer.send_html("exercises/_inside_status.html", {"widget": widget})
        await consumer.error(event["error"], context)


def _inside_view(widget: str, event: dict[str, Any], shown_shape: str) -> dict[str, Any]:
    """What _inside_result.html shows: a shade per heat-map cell, the model's final answer marked in the lens."""
    tokens = event["tokens"]
    heat = []
    for i, weights in enumerate(event["attention"]):
        cells = [
            {"key": tokens[j], "p": p, "shade": min(HEAT_SHADES - 1, int(math.sqrt(max(p, 0)) * HEAT_SHADES))}
            for j, p in enumerate(weights[: i + 1])
        ]
        heat.append({"token": tokens[i], "cells": cells, "masked": range(len(tokens) - i - 1)})
    final = event["lens"][-1]["top"][0]["id"]
    lens = [{**row, "top": [{**t, "final": t["id"] == final} for t in row["top"]]} for row in event["lens"]]
    return {
        "widget": widget,
        "tokens": tokens,
        "heat": heat,
        "legend": HEAT_LEGEND,
        "lens": lens,
        **{name: event[name] for name in ("layer", "head", "layers", "heads")},
        # The pickers are swapped only when the model's shape differs: replacing a select on
        # every reply would take the keyboard focus away from a learner stepping through heads.
        "picks": f"{event['layers']}x{event['heads']}" != shown_shape,
    }


# --- What comes back ------------------------------------------------------------------------------------


async def on_event(consumer: ExerciseConsumer, kind: str, event: dict[str, Any], context: dict[str, Any]) -> None:
    widget = context["widget"]
    if context["kind"] == "inside-the-model":
        await _inside_event(consumer, kind, event, context)
    elif context["kind"] == "compare":
        await _compare_event(consumer, kind, event, context)
    elif kind == "error":
        await consumer.error(event["error"], context)
    elif kind == "queued":
        await consumer.send_html("exercises/_queued.html", {"widget": widget, "position": event["position"]})
    elif kind == "started":
        await consumer.send_html("exercises/_queued.html", {"widget": widget, "position": 0})
    elif context["kind"] == "next-token":
        await _next_token_event(consumer, kind, event, context)
    elif kind == "tokens":
        context["count"] += len(event["tokens"])
        await consumer.send_html("exercises/_gen_tokens.html", {"widget": widget, "tokens": event["tokens"]})
    elif kind == "done":
        await consumer.send_html(
            "exercises/_gen_done.html", {"widget": widget, "reason": event["reason"], "usage": event.get("usage", {})}
        )


async def _next_token_event(
    consumer: ExerciseConsumer, kind: str, event: dict[str, Any], context: dict[str, Any]
) -> None:
    widget = context["widget"]
    if kind == "tokens":
        context["generated"] += [token["id"] for token in event["tokens"]]
        if context.get("step") != "greedy":  # the greedy comparison path is scored, not shown
            await consumer.send_html("exercises/_nt_append.html", {"widget": widget, "tokens": event["tokens"]})
    elif kind == "candidates" and context.get("streaming"):
        context["last_candidates"] = event  # shown when the stream ends, not at every token
    elif kind == "candidates":
        await _show_candidates(consumer, widget, event)
    elif kind == "scored" and context["step"] == "score-mine":
        # Then the greedy path of the same length, to compare with.
        follow_up = {**context, "step": "greedy", "mine": event, "generated": []}
        params = {"temperature": 0, "max_tokens": len(context["chosen"])}
        await consumer.submit(follow_up, context["prompt"], params, adapter=context.get("adapter"))
    elif kind == "scored" and context["step"] == "score-greedy":
        await consumer.send_html(
            "exercises/_nt_score.html",
            {"widget": widget, "mine": context["mine"], "greedy": event, "count": len(context["chosen"])},
        )
    elif kind == "done" and context.get("step") == "greedy":
        greedy_ids = context["generated"]
        if not greedy_ids:
            await consumer.error("the model ended its greedy path at once; nothing to compare", context)
            return
        follow_up = {**context, "step": "score-greedy"}
        await consumer.submit(
            follow_up,
            context["prompt"],
            {"max_tokens": 0},
            mode="score",
            continuation_ids=greedy_ids,
            adapter=context.get("adapter"),
        )
    elif kind == "done" and context.get("step") not in {"score-mine", "score-greedy"}:
        if context["generated"]:
            await _finish_stream(consumer, context, event["reason"])
        else:
            await consumer.send_html("exercises/_nt_busy.html", {"widget": widget, "done": ""})
        if context.get("last_candidates"):
            await _show_candidates(consumer, widget, context["last_candidates"])


async def _show_candidates(consumer: ExerciseConsumer, widget: str, event: dict[str, Any]) -> None:
    context = {"widget": widget, "raw": event["raw"], "adjusted": event["adjusted"]}
    await consumer.send_html("exercises/_nt_candidates.html", context)
