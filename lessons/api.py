"""The HTTP API of the serving lesson: OpenAI-style completions and a tokenizer endpoint.

    POST /v1/completions   {"prompt": "...", "max_tokens": 16, "temperature": 1, "top_p": 1,
                            "stop": [...], "seed": 1, "stream": false, "logprobs": 0..5}
    POST /api/tokenize     {"text": "..."}

Both take `Authorization: Bearer <token>` with a token from the learner's account page.
Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
The view talks to the model servers over the channel layer, as the websockets do; it never
imports torch.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from lessons.models import ApiToken
from lessons.ratelimit import allow
from workers.inference.protocol import REQUEST_CHANNEL, SERVERS_GROUP, cancel_message, live_servers, request_message
from workers.inference.sampling import MAX_TOKENS_LIMIT, BadRequest, SamplingParams
from workers.inference.tokenizer import course_tokenizer

MAX_BODY_BYTES = 64 * 1024
MAX_LOGPROBS = 5
ANSWER_TIMEOUT = 10.0  # seconds for a model server to take the request


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JsonResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}
        response = JsonResponse(body, status=self.status)
        if self.status == 429:
            response["Retry-After"] = "60"
        return response


async def _authenticate(request: HttpRequest) -> ApiToken:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise ApiError(
            401,
            "Send your API token as 'Authorization: Bearer <token>'. Create one on your account page.",
            "authentication_error",
        )
    digest = ApiToken.hash(header[7:].strip())
    token = await ApiToken.objects.usable().select_related("user").filter(digest=digest).afirst()
    if token is None or not token.user.is_active:
        raise ApiError(401, "That API token is unknown or revoked.", "authentication_error")
    await ApiToken.objects.filter(pk=token.pk).aupdate(last_used_at=timezone.now())
    if not await allow("api", f"user:{token.user_id}", settings.API_RATE_PER_MINUTE):
        raise ApiError(
            429,
            f"Rate limit: at most {settings.API_RATE_PER_MINUTE} requests a minute. Try again shortly.",
            "rate_limit_exceeded",
        )
    return token


def _body(request: HttpRequest) -> dict[str, Any]:
    if len(request.body) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB.")
    try:
        body = json.loads(request.body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc.msg} at character {exc.pos}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def api_view(view):
    """csrf-exempt (token auth), POST only, ApiError -> OpenAI-shaped error response."""

    async def wrapper(request: HttpRequest) -> HttpResponse:
        try:
            return await view(request)
        except ApiError as error:
            return error.response()

    return csrf_exempt(require_POST(wrapper))


@api_view
async def tokenize(request: HttpRequest) -> HttpResponse:
    await _authenticate(request)
    text = _body(request).get("text")
    if not isinstance(text, str):
        raise ApiError(400, "'text' must be a string.", param="text")
    encoding = course_tokenizer().encode(text, add_special_tokens=False)
    tokens = [{"id": i, "text": text[a:b]} for i, (a, b) in zip(encoding.ids, encoding.offsets, strict=True)]
    return JsonResponse({"model": settings.MODEL_PATH.name, "count": len(tokens), "tokens": tokens})


def _completion_params(body: dict[str, Any]) -> tuple[str, dict[str, Any], int, bool]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string.", param="prompt")
    for unsupported in ("echo", "best_of", "suffix"):
        if body.get(unsupported):
            raise ApiError(400, f"'{unsupported}' is not supported by this server.", param=unsupported)
    if body.get("n", 1) != 1:
        raise ApiError(400, "'n' must be 1: this server returns one completion per request.", param="n")
    logprobs = body.get("logprobs") or 0
    if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= MAX_LOGPROBS:
        raise ApiError(400, f"'logprobs' must be a whole number from 0 to {MAX_LOGPROBS}.", param="logprobs")
    params = {
        "max_tokens": body.get("max_tokens", 16),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "top_k": body.get("top_k"),
        "seed": body.get("seed"),
        "stop": body.get("stop"),
        # Candidates are how the engine reports log-probabilities of alternatives.
        "candidates": logprobs,
    }
    if params["max_tokens"] is None:
        params["max_tokens"] = 16
    try:
        parsed = SamplingParams.from_dict(params)
    except BadRequest as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    if parsed.max_tokens == 0:
        raise ApiError(400, f"'max_tokens' must be between 1 and {MAX_TOKENS_LIMIT}.", param="max_tokens")
    return prompt, params, logprobs, bool(body.get("stream"))


async def _model(token: ApiToken, body: dict[str, Any]) -> tuple[str, dict[str, str] | None]:
    """(the model's name for replies, the adapter for the request) from the request's 'model'.

    Absent or the course model's name: the base model. Otherwise it names one of the token
    owner's LoRA adapters by its job's code ("<code>" or "<code>:best"), as their jobs page shows.
    """
    from workers.jobs.adapters import AdapterNotFound, adapter_for_user

    name = body.get("model")
    if name in (None, "", settings.MODEL_PATH.name):
        return settings.MODEL_PATH.name, None
    if not isinstance(name, str):
        raise ApiError(400, "'model' must be a string.", param="model")
    try:
        choice = await database_sync_to_async(adapter_for_user)(token.user, name)
    except AdapterNotFound:
        message = (
            f"The model '{name[:100]}' does not exist or is not yours. Use '{settings.MODEL_PATH.name}' or the "
            "code of one of your finished fine-tuning jobs."
        )
        raise ApiError(404, message, param="model") from None
    return choice.value, choice.message


@api_view
async def completions(request: HttpRequest) -> HttpResponse:
    token = await _authenticate(request)
    body = _body(request)
    prompt, params, logprobs, stream = _completion_params(body)
    model, adapter = await _model(token, body)
    if not await live_servers(settings.REDIS_URL):
        raise ApiError(503, "The model server is not running right now. Try again in a minute.", "server_error")
    run = _Run(f"user:{token.user_id}:api", prompt, params, logprobs, model, adapter)
    await run.start()
    if stream:
        response = StreamingHttpResponse(run.sse(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # let a proxy pass each event on at once
        return response
    return JsonResponse(await run.whole())


class _Run:
    """One completion request: sent to the model servers, read back from a private channel."""

    def __init__(
        self, owner: str, prompt: str, params: dict[str, Any], logprobs: int, model: str, adapter: dict | None
    ) -> None:
        self.owner, self.prompt, self.params, self.logprobs = owner, prompt, params, logprobs
        self.model, self.adapter = model, adapter
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.layer = get_channel_layer()
        self.finished = False

    async def start(self) -> None:
        self.channel = await self.layer.new_channel("api.")
        message = request_message(
            self.id, self.channel, self.owner, self.prompt, self.params,
            timeout=settings.MODEL_REQUEST_TIMEOUT, adapter=self.adapter,
        )  # fmt: skip
        await self.layer.send(REQUEST_CHANNEL, message)
        first = await self._next(ANSWER_TIMEOUT)
        if first is None:
            await self.cancel()
            raise ApiError(503, "No model server took the request in time. Try again in a minute.", "server_error")
        if first["kind"] == "error":
            raise ApiError(400, first["error"])
        self.pending = [first]

    async def _next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.layer.receive(self.channel), timeout)
        except TimeoutError:
            return None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while self.pending:
            yield self.pending.pop(0)
        while not self.finished:
            event = await self._next(settings.MODEL_REQUEST_TIMEOUT + 5)
            if event is None:
                raise ApiError(504, "The model stopped answering.", "server_error")
            if event["kind"] in {"done", "error"}:
                self.finished = True
            yield event

    async def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            await self.layer.group_send(SERVERS_GROUP, cancel_message(self.id))

    def _choice(self, text: str, finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}

    def _envelope(self, choices: list[dict], usage: dict | None = None) -> dict[str, Any]:
        body = {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices}  # fmt: skip
        if usage is not None:
            body["usage"] = usage
        return body

    async def whole(self) -> dict[str, Any]:
        text, tokens, candidates, done = "", [], [], {}
        async for event in self.events():
            if event["kind"] == "tokens":
                text += event["text"]
                tokens += event["tokens"]
            elif event["kind"] == "candidates":
                candidates.append(event)
            elif event["kind"] == "done":
                done = event
            elif event["kind"] == "error":
                raise ApiError(400, event["error"])
        return self._envelope(
            [self._choice(text, _finish_reason(done), self._logprobs(tokens, candidates))], _usage(done)
        )

    async def sse(self) -> AsyncIterator[str]:
        candidates: list[dict] = []
        try:
            async for event in self.events():
                if event["kind"] == "candidates":
                    candidates.append(event)
                elif event["kind"] == "tokens":
                    chunk = self._choice(event["text"], None, self._logprobs(event["tokens"], candidates))
                    candidates = candidates[len(event["tokens"]) :]
                    yield _sse(self._envelope([chunk]))
                elif event["kind"] == "done":
                    yield _sse(self._envelope([self._choice("", _finish_reason(event), None)], _usage(event)))
                elif event["kind"] == "error":
                    yield _sse(
                        {"error": {"message": event["error"], "type": "server_error", "param": None, "code": None}}
                    )
            yield "data: [DONE]\n\n"
        finally:
            await self.cancel()  # the client went away mid-stream: free the row

    def _logprobs(self, tokens: list[dict], candidates: list[dict]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        result: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        offset = len(self.prompt)
        for token, step in zip(tokens, candidates, strict=False):
            result["tokens"].append(token["text"])
            result["token_logprobs"].append(token.get("logprob"))
            result["top_logprobs"].append({c["text"]: math.log(c["p"]) for c in step["raw"] if c["p"] > 0})
            result["text_offset"].append(offset)
            offset += len(token["text"])
        return result


def _finish_reason(done: dict[str, Any]) -> str:
    return {"stop": "stop", "end": "stop"}.get(done.get("reason", ""), "length")


def _usage(done: dict[str, Any]) -> dict[str, int]:
    usage = done.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
