"""A forward pass over a Llama-architecture model for many rows of different lengths at once.

Hugging Face's model classes pad a batch to one shape; continuous batching needs rows that
join and leave at every step, each at its own position. This runner uses the loaded model's
weights with its own small forward pass:

- every row owns a slot in a key/value cache (one tensor per layer, [slots, kv_heads, T, d]);
- one step takes *segments*: a row's next chunk of tokens (a prompt chunk, or the one token it
  just sampled). All tokens of all segments go through each linear layer as one matrix, which
  is where the time goes; attention is done per kind of segment against the rows' caches;
- logits are computed only where someone needs them (the last token of a segment, or every
  token when a row is being scored), because the 49,152-way output layer is the largest one.

The result equals the Hugging Face model's logits (tests/inference/test_runner.py checks it).

A segment may name a LoRA adapter (workers/inference/adapters.py): its tokens then get that
adapter's low-rank update on top of every adapted layer, while the other rows of the same step
use the base model or their own adapters. The shared base products are computed once for all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from workers.inference.adapters import AdapterPlan, StackCache

if TYPE_CHECKING:
    from workers.inference.adapters import LoraAdapter


def weight_layout(dtype: torch.dtype, device: torch.device) -> str:
    """How the runner lays out its weight matrices: "transposed" [in, out], "packed" (oneDNN's
    blocked layout, bfloat16 on a CPU whose PyTorch can do it) or "plain" [out, in]."""
    if device.type != "cpu":
        return "plain"
    if dtype == torch.float32:
        return "transposed"
    if dtype == torch.bfloat16 and _can_pack():
        return "packed"
    return "plain"


def _can_pack() -> bool:
    """True when this PyTorch packs bfloat16 weights for oneDNN and multiplies them correctly."""
    try:
        weight = torch.randn(8, 16).bfloat16()
        x = torch.randn(3, 16).bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        result = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return torch.allclose(result.float(), F.linear(x, weight).float(), rtol=1e-2, atol=1e-2)


def fused_attention_limit(dtype: torch.dtype, device: torch.device) -> float:
    """Rows x key positions up to which attention goes through PyTorch's fused kernel; past it,
    two plain products with a float32 softmax are faster for bfloat16 on a CPU
    (bench/bench_kernels.py, one thread: 1 row x 64 positions 2.7x faster fused, 4 x 64 1.2x,
    4 x 320 0.76x, 16 x 64 0.58x; a 16-row decoding step 18% faster). In float32 the fused
    kernel is the faster one at every size measured (16 x 320: 1.2x); a GPU uses it throughout."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return 512
    return math.inf


@dataclass
class Segment:
    slot: int
    start: int  # position of the first token (= tokens of this row already in the cache)
    tokens: list[int]
    all_logits: bool = False  # logits for every token, not just the last
    adapter: LoraAdapter | None = None  # None: the base model


class LlamaRunner:
    def __init__(self, model, max_slots: int, max_context: int, layout: str | None = None) -> None:
        config = model.config
        if config.model_type not in {"llama", "mistral", "qwen2"} or getattr(config, "attention_bias", False):
            raise ValueError(f"the batching engine runs Llama-style models, not {config.model_type!r}")
        self.model = model.eval()
        self.config = config
        self.layers = model.model.layers
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.max_slots = max_slots
        self.max_context = max_context
        weight = model.model.embed_tokens.weight
        self.dtype, self.device = weight.dtype, weight.device
        # Fewer, larger products: q, k and v as one matrix, gate and up as another. Each product
        # takes the layout its kernel streams fastest (bench/bench_kernels.py): float32 weights laid
        # out [in, out] for `x @ w` (MKL's one-row products are markedly faster that way round);
        # bfloat16 ones on a CPU handed to oneDNN once, in its own blocked layout ("packed"),
        # which streams a one-row product 1.6x faster than F.linear on a plain [out, in] matrix
        # (and must then be used under inference_mode, as forward is: outside it oneDNN copies
        # the packed weights at every call); everything else [out, in] for F.linear.
        self.layout = layout or weight_layout(self.dtype, self.device)
        self.fused_attention_limit = fused_attention_limit(self.dtype, self.device)

        def laid_out(weight: torch.Tensor) -> torch.Tensor:
            if self.layout == "transposed":
                return weight.t().contiguous()
            if self.layout == "packed":
                return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1)
            return weight.contiguous()

        self.qkv = [
            laid_out(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            for a in (layer.self_attn for layer in self.layers)
        ]
        self.o = [laid_out(layer.self_attn.o_proj.weight) for layer in self.layers]
        self.gate_up = [
            laid_out(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])) for layer in self.layers
        ]
        self.down = [laid_out(layer.mlp.down_proj.weight) for layer in self.layers]
        self.lm_head = laid_out(model.lm_head.weight)
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        self.eps = config.rms_norm_eps
        self._rope(max_context)
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._grow(min(256, max_context))
        self._stacks = StackCache()

    def _rope(self, length: int) -> None:
        inv_freq = self.model.model.rotary_emb.inv_freq.to(torch.float32)
        scaling = getattr(self.model.model.rotary_emb, "attention_scaling", 1.0)
        angles = torch.outer(torch.arange(length, dtype=torch.float32, device=inv_freq.device), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.cos = (angles.cos() * scaling).to(self.dtype)
        self.sin = (angles.sin() * scaling).to(self.dtype)

    def _grow(self, capacity: int) -> None:
        """Make room for `capacity` positions per slot, keeping what the cache holds."""
        capacity = min(capacity, self.max_context)
        if capacity <= self.capacity:
            return
        shape = (self.max_slots, self.n_kv, capacity, self.head_dim)
        new_k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        new_v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        for old, new in ((self.k, new_k), (self.v, new_v)):
            for layer, tensor in enumerate(old):
                new[layer][:, :, : self.capacity] = tensor
        self.k, self.v, self.capacity = new_k, new_v, capacity

    def move_slot(self, source: int, target: int, length: int) -> None:
        """Copy a row's cache to another slot (to keep the active slots packed at the front)."""
        for cache in (*self.k, *self.v):
            cache[target, :, :length] = cache[source, :, :length]

    def _product(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.layout == "transposed":
            return x @ weight
        if self.layout == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return F.linear(x, weight)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q [B, heads, n, d] over k, v [B, kv_heads, L, d]; `mask` from `_grouped`.

        Each group of query heads that shares a key/value head is handled as one head with
        `group * n` queries, through PyTorch's fused kernel, or through two plain products once
        rows x positions passes `fused_attention_limit` (bfloat16 on a CPU)."""
        batch, heads, n, dim = q.shape
        stacked = q.reshape(batch, self.n_kv, heads // self.n_kv * n, dim)
        if batch * k.shape[2] > self.fused_attention_limit:
            out = self._attention_products(stacked, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(stacked, k, v, attn_mask=mask)
        return out.reshape(batch, heads, n, dim)

    @staticmethod
    def _attention_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        # k and v are slices of the cache (its first `length` of `capacity` positions): the
        # batched products would copy such operands several times over, one copy each is
        # cheaper (2.4x faster at 16 rows, bench/bench_kernels.py).
        k, v = k.contiguous(), v.contiguous()
        scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores + mask
        return torch.softmax(scores, dim=-1).to(v.dtype) @ v

    def _grouped(self, allowed: torch.Tensor) -> torch.Tensor | None:
        """The mask for `_attention` from `allowed` [B or 1, 1, n, L] (True: may attend): laid out
        for the stacked queries, and additive (0 or -inf) in the model's precision, which the
        fused kernel takes as it is (a True/False mask it converts at every call). None when
        every query may see every position."""
        if bool(allowed.all()):
            return None
        batch, _, n, length = allowed.shape
        group = self.n_heads // self.n_kv
        allowed = allowed.unsqueeze(2).expand(batch, 1, group, n, length).reshape(batch, 1, group * n, length)
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill(~allowed, float("-inf"))

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # as Hugging Face's Llama: the statistics in float32
            wide = x.float()
            return weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + self.eps))

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _adapter_plan(self, segments: list[Segment]) -> AdapterPlan | None:
        """How this step applies adapters: None when no row uses one."""
        adapters: list[LoraAdapter] = []
        number: dict[int, int] = {}  # id(adapter) -> its index in `adapters`
        owners: list[int] = []  # per token: the index of its row's adapter, or -1
        for segment in segments:
            index = -1
            if segment.adapter is not None:
                index = number.setdefault(id(segment.adapter), len(adapters))
                if index == len(adapters):
                    adapters.append(segment.adapter)
            owners += [index] * len(segment.tokens)
        if not adapters:
            return None
        stack = self._stacks.get(tuple(adapters), self.dtype, self.device)
        return AdapterPlan(stack, torch.tensor(owners, device=self.device))

    @torch.inference_mode()
    def forward(self, segments: list[Segment]) -> list[torch.Tensor]:
        """Runs one step; returns, per segment, float32 logits [n, vocab] (n = 1 or all tokens)."""
        end = max(s.start + len(s.tokens) for s in segments)
        if end > self.max_context:
            raise ValueError("a row is longer than the context")
        if end > self.capacity:
            self._grow(max(end, self.capacity * 2))

        ids = torch.tensor([t for s in segments for t in s.tokens], device=self.device)
        positions = torch.cat([torch.arange(s.start, s.start + len(s.tokens)) for s in segments]).to(self.device)
        slots = torch.cat([torch.full((len(s.tokens),), s.slot) for s in segments]).to(self.device)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        # Where each token's key and value go, as rows of a layer's cache seen as [-1, head_dim]:
        # one index_copy_ per layer instead of indexing by (slot, position) pairs.
        heads = torch.arange(self.n_kv, device=self.device)
        cache_rows = ((slots[:, None] * self.n_kv + heads) * self.capacity + positions[:, None]).view(-1)

        offsets, offset = [], 0
        for s in segments:
            offsets.append(offset)
            offset += len(s.tokens)
        singles = [i for i, s in enumerate(segments) if len(s.tokens) == 1]
        chunks = [i for i, s in enumerate(segments) if len(s.tokens) > 1]
        # Rows decoding one token are batched together; longer segments (prompt chunks) each
        # attend on their own with a causal mask. Masks are made once per step, not per layer.
        if singles:
            span = max(segments[i].slot for i in singles) + 1
            length = max(segments[i].start for i in singles) + 1
            # Attention over the packed slot range [0, span): slots that are not decoding this
            # step get a dummy query that may only look at position 0; their output is dropped.
            # Usually every decoding row sits at the slot and token of its own number ("dense"),
            # and their queries are simply the first `span` rows.
            dense = all(segments[i].slot == number == offsets[i] for number, i in enumerate(singles))
            single_rows = torch.tensor([offsets[i] for i in singles], device=self.device)
            single_slots = torch.tensor([segments[i].slot for i in singles], device=self.device)
            key_pos = torch.arange(length, device=self.device)
            limit = torch.zeros(span, dtype=torch.long, device=self.device)
            limit[single_slots] = torch.tensor([segments[i].start for i in singles], device=self.device)
            single_mask = self._grouped((key_pos[None, :] <= limit[:, None])[:, None, None, :])
        chunk_masks = {}
        for i in chunks:
            s = segments[i]
            stop = s.start + len(s.tokens)
            causal = (
                torch.arange(stop, device=self.device)[None, :]
                <= torch.arange(s.start, stop, device=self.device)[:, None]
            )
            chunk_masks[i] = self._grouped(causal[None, None])

        adapted = self._adapter_plan(segments)

        x = self.model.model.embed_tokens(ids)
        for index, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer.input_layernorm.weight)
            qkv = self._product(h, self.qkv[index])
            if adapted:
                adapted.apply(qkv, h, index, "qkv")
            # q and k rotated together: one set of operations instead of two.
            qk = qkv[:, : self.q_size + self.kv_size].view(-1, self.n_heads + self.n_kv, self.head_dim)
            qk = self._rotate(qk, cos, sin)
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(-1, self.n_kv, self.head_dim)
            self.k[index].view(-1, self.head_dim).index_copy_(0, cache_rows, k.reshape(-1, self.head_dim))
            self.v[index].view(-1, self.head_dim).index_copy_(0, cache_rows, v.reshape(-1, self.head_dim))

            keys, values = self.k[index], self.v[index]
            if singles and dense and not chunks:
                attended = self._attention(
                    q.unsqueeze(2), keys[:span, :, :length], values[:span, :, :length], single_mask
                )
                out = attended.view(span, self.n_heads, self.head_dim)
            else:
                out = torch.empty_like(q)
                if singles:
                    queries = torch.zeros(span, self.n_heads, 1, self.head_dim, dtype=q.dtype, device=self.device)
                    queries[single_slots, :, 0] = q[single_rows]
                    attended = self._attention(queries, keys[:span, :, :length], values[:span, :, :length], single_mask)
                    out[single_rows] = attended[single_slots, :, 0]
                for i in chunks:
                    s = segments[i]
                    n, stop = len(s.tokens), s.start + len(s.tokens)
                    rows = slice(offsets[i], offsets[i] + n)
                    attended = self._attention(
                        q[rows].transpose(0, 1).unsqueeze(0),
                        keys[s.slot : s.slot + 1, :, :stop],
                        values[s.slot : s.slot + 1, :, :stop],
                        chunk_masks[i],
                    )
                    out[rows] = attended[0].transpose(0, 1)
            attended = out.reshape(-1, self.q_size)
            projected = self._product(attended, self.o[index])
            if adapted:
                adapted.apply(projected, attended, index, "o")
            x = x + projected
            h = self._rms_norm(x, layer.post_attention_layernorm.weight)
            gate_up = self._product(h, self.gate_up[index])
            if adapted:
                adapted.apply(gate_up, h, index, "gate_up")
            gate, up = gate_up.chunk(2, dim=-1)
            mixed = F.silu(gate) * up
            down = self._product(mixed, self.down[index])
            if adapted:
                adapted.apply(down, mixed, index, "down")
            x = x + down

        wanted = []
        for i, s in enumerate(segments):
            first = offsets[i] if s.all_logits else offsets[i] + len(s.tokens) - 1
            wanted.append((first, offsets[i] + len(s.tokens)))
        picked = torch.cat([x[a:b] for a, b in wanted])
        logits = self._product(self._rms_norm(picked, self.model.model.norm.weight), self.lm_head).float()
        results, at = [], 0
        for a, b in wanted:
            results.append(logits[at : at + b - a])
            at += b - a
        return results
