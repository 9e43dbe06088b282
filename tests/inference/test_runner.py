"""The batching forward pass gives the same logits as the Hugging Face model it borrows weights from."""

from __future__ import annotations

import math

import pytest
import torch

from tests.inference.conftest import ids
from workers.inference.runner import LlamaRunner, Segment


@pytest.mark.parametrize("which", ["tiny", "real"])
@pytest.mark.parametrize("attention", ["fused", "products"])
def test_ragged_batches_match_the_reference_model(request, which, attention):
    """Both ways of computing attention (the fused kernel for small steps, two products for
    large ones in bfloat16 on a CPU) give the reference logits: the size limit is set to pick one."""
    model, tokenizer = request.getfixturevalue(which)
    runner = LlamaRunner(model, max_slots=4, max_context=256)
    runner.fused_attention_limit = math.inf if attention == "fused" else 0
    a = ids(tokenizer, "The capital of France is")
    b = ids(tokenizer, "The cat sat on the mat and then it")
    with torch.no_grad():
        ref_a = model(torch.tensor([a])).logits[0]
        ref_b = model(torch.tensor([b])).logits[0]

    # a's prompt in two chunks, b's in one, in the same steps.
    first = runner.forward([Segment(0, 0, a[:3], all_logits=True), Segment(1, 0, b, all_logits=True)])
    second = runner.forward([Segment(0, 3, a[3:], all_logits=True)])
    assert torch.allclose(first[1], ref_b, atol=2e-4)
    assert torch.allclose(torch.cat([first[0], second[0]]), ref_a, atol=2e-4)

    # One decoding step for both rows, and then for b alone (a's slot sits idle).
    next_a, next_b = int(ref_a[-1].argmax()), int(ref_b[-1].argmax())
    with torch.no_grad():
        ref_a2 = model(torch.tensor([a + [next_a]])).logits[0, -1]
        ref_b2 = model(torch.tensor([b + [next_b]])).logits[0, -1]
    both = runner.forward([Segment(0, len(a), [next_a]), Segment(1, len(b), [next_b])])
    assert torch.allclose(both[0][0], ref_a2, atol=2e-4)
    assert torch.allclose(both[1][0], ref_b2, atol=2e-4)
    alone = runner.forward([Segment(1, len(b), [next_b])])
    assert torch.allclose(alone[0][0], ref_b2, atol=2e-4)


def test_the_cache_grows_past_its_first_size(tiny):
    model, _ = tiny
    runner = LlamaRunner(model, max_slots=1, max_context=512)
    tokens = list(range(10, 310))  # longer than the first 256 positions
    with torch.no_grad():
        reference = model(torch.tensor([tokens])).logits[0, -1]
    runner.forward([Segment(0, 0, tokens[:200])])
    out = runner.forward([Segment(0, 200, tokens[200:])])
    assert runner.capacity >= 300
    assert torch.allclose(out[0][-1], reference, atol=2e-4)


def test_a_row_longer_than_the_context_is_refused(tiny):
    runner = LlamaRunner(tiny[0], max_slots=1, max_context=64)
    with pytest.raises(ValueError, match="longer than the context"):
        runner.forward([Segment(0, 0, list(range(65)))])


def test_in_bfloat16_the_runner_matches_the_reference_model_in_bfloat16(tokenizer):
    """MODEL_DTYPE=bfloat16 (the default on CPUs with native bfloat16): the runner's products,
    norms and cache are those of Hugging Face's own bfloat16 forward pass, and batched rows
    get the logits they get alone."""
    from django.conf import settings

    from workers.inference.loading import load_model

    model, _ = load_model(settings.MODEL_PATH, "cpu", "bfloat16")
    assert model.dtype == torch.bfloat16
    runner = LlamaRunner(model, max_slots=2, max_context=128)
    a = ids(tokenizer, "The capital of France is")
    b = ids(tokenizer, "Once upon a time, in a small village,")
    with torch.no_grad():
        ref_a = model(torch.tensor([a])).logits[0, -1].float()
    alone = runner.forward([Segment(0, 0, a)])[0][-1]
    together = runner.forward([Segment(0, 0, a), Segment(1, 0, b)])[0][-1]
    assert alone.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: logits of size ~20 agree to a few tenths.
    assert (alone - ref_a).abs().max() < 0.5
    assert int(alone.argmax()) == int(ref_a.argmax()) == ids(tokenizer, " Paris")[0]
    assert (together - alone).abs().max() < 0.5
    probs_alone, probs_ref = torch.softmax(alone, -1), torch.softmax(ref_a, -1)
    assert float((probs_alone - probs_ref).abs().sum()) < 0.1


def test_bfloat16_weights_packed_for_onednn_give_the_plain_layouts_logits(tokenizer):
    """On CPUs with native bfloat16 the runner hands its weights to oneDNN in its blocked layout
    (the fast one-row products); every kind of step must give what plain [out, in] weights give:
    prompt chunks, all rows decoding, one row decoding beside an idle slot, and a mix."""
    from django.conf import settings

    from workers.inference.loading import cpu_has_native_bfloat16, load_model
    from workers.inference.runner import weight_layout

    model, _ = load_model(settings.MODEL_PATH, "cpu", "bfloat16")
    if cpu_has_native_bfloat16():
        assert weight_layout(torch.bfloat16, torch.device("cpu")) == "packed"
    fast = LlamaRunner(model, max_slots=3, max_context=128)
    plain = LlamaRunner(model, max_slots=3, max_context=128, layout="plain")
    a = ids(tokenizer, "The capital of France is")
    b = ids(tokenizer, "Once upon a time, in a small village,")
    c = ids(tokenizer, "def add(a, b):")
    steps = [
        [Segment(0, 0, a, all_logits=True), Segment(1, 0, b)],
        [Segment(0, len(a), [5]), Segment(1, len(b), [6])],
        [Segment(1, len(b) + 1, [7])],
        [Segment(0, len(a) + 1, [8]), Segment(1, len(b) + 2, [9]), Segment(2, 0, c)],
    ]
    for segments in steps:
        for got, want in zip(fast.forward(segments), plain.forward(segments), strict=True):
            assert (got - want).abs().max() < 0.05


def test_auto_precision_is_bfloat16_only_where_the_hardware_has_it(monkeypatch):
    from workers.inference import loading

    assert loading.serving_dtype("cpu", "float32") == torch.float32
    assert loading.serving_dtype("cuda", "auto") == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bfloat16", lambda: False)
    assert loading.serving_dtype("cpu", "auto") == torch.float32
    monkeypatch.setattr(loading, "cpu_has_native_bfloat16", lambda: True)
    assert loading.serving_dtype("cpu", "auto") == torch.bfloat16
