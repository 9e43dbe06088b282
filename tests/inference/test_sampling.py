"""Sampling parameters: out-of-range values get a message naming them; the knobs reshape as taught."""

from __future__ import annotations

import pytest
import torch

from workers.inference.sampling import BadRequest, SamplingParams, adjusted_probs


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"temperature": -0.5}, "temperature must be between 0 and 5"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"temperature": float("nan")}, "finite"),
        ({"top_k": 0}, "top_k must be between 1 and 49152"),
        ({"top_k": 2.5}, "top_k must be a whole number"),
        ({"top_p": 1.5}, "top_p must be between 0 and 1"),
        ({"top_p": 0}, "top_p must be greater than 0"),
        ({"max_tokens": 100000}, "max_tokens must be between 0 and 512"),
        ({"seed": -1}, "seed must be between"),
        ({"stop": [""]}, "stop must be a string or a list of non-empty strings"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop strings"),
        ({"max_tokens": True}, "max_tokens must be a number"),
    ],
)
def test_bad_parameters_are_refused_by_name(data, message):
    with pytest.raises(BadRequest, match=message):
        SamplingParams.from_dict(data)


def test_empty_form_fields_mean_the_defaults():
    params = SamplingParams.from_dict({"temperature": "", "top_k": "", "top_p": "", "seed": "", "stop": "\n"})
    assert params == SamplingParams(stop=("\n",))


LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0])


def test_temperature_sharpens_and_flattens():
    base = adjusted_probs(LOGITS, SamplingParams(temperature=1.0))
    cold = adjusted_probs(LOGITS, SamplingParams(temperature=0.5))
    hot = adjusted_probs(LOGITS, SamplingParams(temperature=2.0))
    assert torch.allclose(base, torch.softmax(LOGITS, -1))
    assert cold[0] > base[0] > hot[0]


def test_greedy_puts_all_mass_on_the_top_token():
    assert adjusted_probs(LOGITS, SamplingParams(temperature=0)).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_top_k_keeps_k_tokens_and_top_p_the_smallest_set_reaching_p():
    top_k = adjusted_probs(LOGITS, SamplingParams(top_k=2))
    assert (top_k > 0).tolist() == [True, True, False, False]
    probs = torch.softmax(LOGITS, -1)  # about 0.61, 0.22, 0.14, 0.03
    top_p = adjusted_probs(LOGITS, SamplingParams(top_p=0.7))
    assert (top_p > 0).tolist() == [True, True, False, False]
    assert torch.allclose(top_p[:2], probs[:2] / probs[:2].sum())
    assert (adjusted_probs(LOGITS, SamplingParams(top_p=0.5)) > 0).tolist() == [True, False, False, False]


def test_pick_draws_in_proportion_to_the_probabilities():
    from workers.inference.sampling import pick

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([pick(probs, generator) for _ in range(4000)]), minlength=4)
    assert counts[3] == 0
    assert torch.allclose(counts / 4000, probs, atol=0.03)
    first, second = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [pick(probs, first) for _ in range(50)] == [pick(probs, second) for _ in range(50)]


def test_zero_probability_tokens_are_never_drawn_wherever_they_are():
    from workers.inference.sampling import pick

    probs = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.5, 0.0])
    generator = torch.Generator().manual_seed(1)
    drawn = {pick(probs, generator) for _ in range(2000)}
    assert drawn == {1, 4}


@pytest.mark.parametrize("spread", [0.5, 3.0, 8.0])  # from nearly flat (thousands kept) to peaked
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_keeps_the_same_tokens_as_sorting_the_whole_vocabulary(spread, top_p):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(49152, generator=generator) * spread
    probs = torch.softmax(logits, -1)
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, -1) - sorted_probs
    kept = order[before < top_p]
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()

    got = adjusted_probs(logits, SamplingParams(top_p=top_p))
    assert torch.equal(got > 0, expected > 0)
    assert torch.allclose(got, expected, atol=1e-6)
