"""Sampling parameters, their checks, and what they do to a row of logits.

Plain Python + torch, no Django. The web side validates with `SamplingParams.from_dict` (no
torch needed for that); the engine applies them with the torch functions below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MAX_TOKENS_LIMIT = 512
MAX_STOP_STRINGS = 4
MAX_CANDIDATES = 20


class BadRequest(ValueError):
    """A request the learner can fix; the message says how, `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None  # None: no limit
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 64
    stop: tuple[str, ...] = field(default_factory=tuple)
    candidates: int = 0  # how many next-token candidates to report

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        """Reads and checks parameters from a request; raises BadRequest naming the bad one."""
        temperature = _number(data, "temperature", 1.0, 0.0, 5.0)
        top_k_raw = data.get("top_k")
        top_k = None
        if top_k_raw not in (None, ""):
            top_k = int(_number(data, "top_k", 0, 1, 49152, whole=True))
        top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0:
            raise BadRequest("top_p must be greater than 0 and at most 1", "top_p")
        seed_raw = data.get("seed")
        seed = None if seed_raw in (None, "") else int(_number(data, "seed", 0, 0, 2**63 - 1, whole=True))
        max_tokens = int(_number(data, "max_tokens", 64, 0, MAX_TOKENS_LIMIT, whole=True))
        candidates = int(_number(data, "candidates", 0, 0, MAX_CANDIDATES, whole=True))
        stop = data.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("stop must be a string or a list of non-empty strings", "stop")
        if len(stop) > MAX_STOP_STRINGS:
            raise BadRequest(f"at most {MAX_STOP_STRINGS} stop strings", "stop")
        if any(len(s) > 64 for s in stop):
            raise BadRequest("each stop string may be at most 64 characters", "stop")
        return cls(temperature, top_k, top_p, seed, max_tokens, tuple(stop), candidates)


def _number(data: dict[str, Any], name: str, default: float, low: float, high: float, whole: bool = False) -> float:
    raw = data.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise BadRequest(f"{name} must be a number", name)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number, not {str(raw)[:20]!r}", name) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{name} must be a finite number", name)
    if whole and value != int(value):
        raise BadRequest(f"{name} must be a whole number", name)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}, not {value:g}", name)
    return value


def adjusted_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution the sampler draws from: temperature, then top-k, then top-p.

    `logits` is one row [vocab]. Greedy (temperature 0) puts all mass on the top token.
    """
    import torch

    if params.greedy:
        probs = torch.zeros_like(logits)
        probs[int(torch.argmax(logits))] = 1.0
        return probs
    scaled = logits / params.temperature
    if params.top_k is not None and params.top_k < scaled.numel():
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        # Keep the smallest set whose mass reaches top_p: a token stays if the mass before it
        # is still below top_p (so the first token always stays). Sorting the whole vocabulary
        # takes milliseconds; the kept set nearly always lies within the top 256, so those are
        # taken first and the full sort is the fallback.
        shortlist = min(256, probs.numel())
        sorted_probs, order = torch.topk(probs, shortlist)
        if shortlist < probs.numel() and float(sorted_probs.sum()) < params.top_p:
            sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def pick(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token drawn with probability `probs`, from one uniform random number.

    Inverse transform sampling: lay the probabilities end to end on [0, total) (a running sum)
    and find where a uniform point falls. A token with probability 0 covers no length, so it is
    never drawn. One random number per token instead of one per vocabulary entry: drawing
    49,152 random numbers costs about a millisecond a row on a CPU, this a tenth of that.
    """
    import torch

    ends = torch.cumsum(probs, dim=-1)
    point = torch.rand(1, generator=generator, dtype=ends.dtype) * ends[-1]
    index = int(torch.searchsorted(ends, point, right=True))
    return min(index, probs.numel() - 1)


def top(probs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    import torch

    values, ids = torch.topk(probs, k)
    return [(int(i), float(v)) for i, v in zip(ids, values, strict=True) if v > 0]
