"""Inside the model on the real course model: attention of one head, and the logit lens."""

from __future__ import annotations

import pytest
import torch

from tests.inference.conftest import ids
from workers.inference.inspect import MAX_TOKENS, inspect_prompt
from workers.inference.sampling import BadRequest

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def france(real):
    model, tokenizer = real
    return inspect_prompt(model, tokenizer, ids(tokenizer, PROMPT), layer=3, head=2)


def test_it_reports_the_prompts_tokens_and_the_models_shape(france, real):
    _, tokenizer = real
    assert [t["id"] for t in france.tokens] == ids(tokenizer, PROMPT)
    assert "".join(t["text"] for t in france.tokens) == PROMPT
    assert (france.layers, france.heads, france.layer, france.head) == (30, 9, 3, 2)


def test_attention_rows_sum_to_one_and_no_token_looks_ahead(france):
    n = len(france.tokens)
    assert len(france.attention) == n and all(len(row) == n for row in france.attention)
    for i, row in enumerate(france.attention):
        assert sum(row) == pytest.approx(1, abs=1e-5)
        assert all(w == 0 for w in row[i + 1 :])
        assert all(w >= 0 for w in row)
    assert france.attention[0][0] == pytest.approx(1)  # the first token can only look at itself


def reference_attention(model, prompt: list[int], layer: int, head: int) -> torch.Tensor:
    """One head's weights worked out by hand from the layer's own weights: softmax(q k^T / sqrt(d))."""
    block = model.model.layers[layer]
    config = model.config
    d = config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads  # query heads per key/value head
    inputs = []
    hook = block.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
    with torch.no_grad():
        model(torch.tensor([prompt]))
        hook.remove()
        x = block.input_layernorm(inputs[0][0])
        q = block.self_attn.q_proj(x).view(len(prompt), -1, d)[:, head]
        k = block.self_attn.k_proj(x).view(len(prompt), -1, d)[:, head // group]
        cos, sin = model.model.rotary_emb(x, torch.arange(len(prompt))[None])
        cos, sin = cos[0], sin[0]

        def rotate(t: torch.Tensor) -> torch.Tensor:
            half = t.shape[-1] // 2
            return t * cos + torch.cat([-t[:, half:], t[:, :half]], dim=-1) * sin

        scores = rotate(q) @ rotate(k).T / d**0.5
        causal = torch.ones(len(prompt), len(prompt), dtype=torch.bool).tril()
        return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


@pytest.mark.parametrize(("layer", "head"), [(3, 2), (3, 5), (20, 2), (29, 8)])
def test_the_attention_is_that_of_the_chosen_layer_and_head(real, layer, head):
    model, tokenizer = real
    prompt = ids(tokenizer, "The animal didn't cross the street because it was too tired")
    got = torch.tensor(inspect_prompt(model, tokenizer, prompt, layer, head).attention)
    assert torch.allclose(got, reference_attention(model, prompt, layer, head), atol=1e-5)
    # The model is left as it was, with the attention implementation it was loaded with.
    assert model.config._attn_implementation == "sdpa"


def test_the_last_layers_lens_is_the_models_own_next_token(france, real):
    model, tokenizer = real
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids(tokenizer, PROMPT)])).logits[0, -1], dim=-1)
    assert [row["layer"] for row in france.lens] == list(range(30))
    final = france.lens[-1]["top"]
    assert final[0]["text"] == " Paris" and final[0]["id"] == int(probs.argmax())
    assert final[0]["p"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert [t["p"] for t in final] == sorted((t["p"] for t in final), reverse=True) and len(final) == 5
    # Earlier layers have not got there yet: " Paris" is not the top guess halfway up.
    assert france.lens[14]["top"][0]["text"] != " Paris"


def test_the_lens_can_read_only_some_layers(real):
    model, tokenizer = real
    result = inspect_prompt(model, tokenizer, ids(tokenizer, PROMPT), 0, 0, lens_layers=[4, 29], top=3)
    assert [row["layer"] for row in result.lens] == [4, 29]
    assert len(result.lens[0]["top"]) == 3


def test_the_wire_form_rounds_the_weights(france):
    wire = france.as_dict()
    assert wire["attention"][1] == [round(w, 4) for w in france.attention[1]]
    assert wire["lens"][-1]["top"][0]["text"] == " Paris"


def test_a_prompt_over_the_limit_is_refused_and_one_at_it_is_not(real):
    model, tokenizer = real
    prompt = ids(tokenizer, " ".join(["word"] * (MAX_TOKENS + 1)))
    assert len(prompt) == MAX_TOKENS + 1
    with pytest.raises(BadRequest, match=f"is {MAX_TOKENS + 1} tokens long; this view takes at most {MAX_TOKENS}"):
        inspect_prompt(model, tokenizer, prompt, 0, 0)
    assert len(inspect_prompt(model, tokenizer, prompt[:MAX_TOKENS], 0, 0).attention) == MAX_TOKENS


@pytest.mark.parametrize(
    ("prompt", "layer", "head", "error"),
    [
        ("", 0, 0, "the prompt is empty"),
        (PROMPT, 30, 0, "layer must be between 0 and 29"),
        (PROMPT, -1, 0, "layer must be between 0 and 29"),
        (PROMPT, 0, 9, "head must be between 0 and 8"),
    ],
)
def test_it_refuses_what_it_cannot_show(real, prompt, layer, head, error):
    model, tokenizer = real
    with pytest.raises(BadRequest, match=error):
        inspect_prompt(model, tokenizer, ids(tokenizer, prompt), layer, head)
