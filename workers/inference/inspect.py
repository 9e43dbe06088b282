"""Looking inside the model for one short prompt: its tokens, one head's attention, the logit lens.

Plain Python + torch, no Django. The model server runs `inspect_prompt` between engine steps
(workers/inference/server.py); the "Inside the model" widget shows the result.

- Attention: the weights of one head of one layer, a [tokens, tokens] matrix whose row i says
  how much token i looks at each token 0..i. Rows sum to 1; the upper triangle is 0 (the mask).
- Logit lens: the residual stream after a layer, read out as if it were the last layer (final
  norm, then the output layer), at the last position: what the model would predict next if it
  stopped there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workers.inference.sampling import BadRequest

# Enough for a sentence or two; the heat map of a longer prompt has too many cells to read.
MAX_TOKENS = 64
TOP = 5


@dataclass
class Inspection:
    tokens: list[dict[str, Any]]  # {"id", "text"} per prompt token
    layer: int  # the layer and head `attention` belongs to (0-based)
    head: int
    layers: int  # how many layers and heads the model has
    heads: int
    attention: list[list[float]]  # [query][key]
    lens: list[dict[str, Any]]  # {"layer": i, "top": [{"id", "text", "p"}, ...]}, in layer order

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        """The wire form: weights rounded, since a 64 x 64 matrix of full floats is mostly noise digits."""
        return {
            "tokens": self.tokens,
            "layer": self.layer,
            "head": self.head,
            "layers": self.layers,
            "heads": self.heads,
            "attention": [[round(w, digits) for w in row] for row in self.attention],
            "lens": [
                {"layer": row["layer"], "top": [{**t, "p": round(t["p"], digits + 2)} for t in row["top"]]}
                for row in self.lens
            ],
        }


def inspect_prompt(
    model,
    tokenizer,
    ids: Sequence[int],
    layer: int,
    head: int,
    *,
    lens_layers: Sequence[int] | None = None,
    top: int = TOP,
) -> Inspection:
    """One full forward pass of a Hugging Face Llama-style causal LM over `ids`.

    `tokenizer` is a `tokenizers.Tokenizer`. `lens_layers` defaults to every layer. Raises
    BadRequest for an empty or too long prompt and for a layer or head the model does not have.
    """
    ids = [int(i) for i in ids]
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    if not ids:
        raise BadRequest("the prompt is empty")
    if len(ids) > MAX_TOKENS:
        raise BadRequest(f"the prompt is {len(ids)} tokens long; this view takes at most {MAX_TOKENS}: shorten it")
    if not 0 <= layer < layers:
        raise BadRequest(f"layer must be between 0 and {layers - 1}")
    if not 0 <= head < heads:
        raise BadRequest(f"head must be between 0 and {heads - 1}")
    lens_layers = list(range(layers)) if lens_layers is None else [int(i) for i in lens_layers]
    if any(not 0 <= i < layers for i in lens_layers):
        raise BadRequest(f"lens layers must be between 0 and {layers - 1}")

    decoder = model.model
    device = decoder.embed_tokens.weight.device
    # The residual stream after each block, taken with hooks rather than from `output_hidden_states`:
    # there the last entry has already been through the final norm (transformers 5.25), the
    # others have not, and the lens must treat every layer alike.
    residuals: list[torch.Tensor] = []

    def keep(module, args, output) -> None:
        residuals.append(output[0] if isinstance(output, tuple) else output)

    hooks = [block.register_forward_hook(keep) for block in decoder.layers]
    previous = config._attn_implementation
    try:
        # Only the eager implementation hands back attention weights (sdpa returns an empty
        # tuple). The batching runner does its own attention, so switching is safe as long as
        # nothing else runs the Hugging Face forward meanwhile; the server makes sure of that.
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            output = model(torch.tensor([ids], device=device), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
        for hook in hooks:
            hook.remove()

    with torch.inference_mode():
        attention = output.attentions[layer][0, head].float().cpu().tolist()
        last = torch.stack([residuals[i][0, -1] for i in lens_layers])
        probs = torch.softmax(model.lm_head(decoder.norm(last)).float(), dim=-1)
        values, indices = probs.topk(top, dim=-1)

    lens = []
    for row, layer_index in enumerate(lens_layers):
        picks = zip(indices[row].tolist(), values[row].tolist(), strict=True)
        lens.append({"layer": layer_index, "top": [{"id": i, "text": tokenizer.decode([i]), "p": p} for i, p in picks]})
    return Inspection(
        tokens=[{"id": i, "text": tokenizer.decode([i])} for i in ids],
        layer=layer,
        head=head,
        layers=layers,
        heads=heads,
        attention=attention,
        lens=lens,
    )
