"""LoRA adapters in the batching runner: the same logits as PEFT's, several adapters per step."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest
import torch

from tests.inference.conftest import ids, run
from workers.inference.adapters import AdapterCache, AdapterError, build_adapter, load_adapter, read_adapter
from workers.inference.engine import Engine, Request
from workers.inference.runner import LlamaRunner, Segment
from workers.inference.sampling import SamplingParams

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model, folder: Path, seed: int, targets=ALL_LINEAR, rank: int = 4, boost: float = 20, **options):
    """A PEFT adapter with random (not zero) B matrices, saved as PEFT saves it; returns the
    PEFT model, which is the reference."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False, **options)
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    with torch.no_grad():  # large enough updates that a missed one would show
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(boost)
    peft_model.save_pretrained(folder)
    return peft_model


def zipped(folder: Path) -> Path:
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.write(folder / name, name)
    return path


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_adapted_rows_match_peft_and_share_a_step_with_other_rows(request, which, tmp_path):
    model, tokenizer = request.getfixturevalue(which)
    boost = 20 if which == "tiny" else 1  # the real model's 30 layers amplify on their own
    first = make_adapter(model, tmp_path / "first", seed=1, boost=boost)
    second = make_adapter(model, tmp_path / "second", 2, ["q_proj", "v_proj"], boost=boost, use_rslora=True)
    runner = LlamaRunner(model, max_slots=3, max_context=128)
    adapter_1 = load_adapter("first", zipped(tmp_path / "first"), runner)
    adapter_2 = load_adapter("second", tmp_path / "second", runner)

    prompt = ids(tokenizer, "The cat sat on the")
    with torch.no_grad():
        base_ref = model(torch.tensor([prompt])).logits[0]
        first_ref = first(torch.tensor([prompt])).logits[0]
        second_ref = second(torch.tensor([prompt])).logits[0]
    # The adapter really changes the model, by far more than the tolerance. Through the 30 real
    # layers, float32 sums taken in another order drift by a few thousandths of a logit.
    tolerance = 2e-4 if which == "tiny" else 5e-3
    assert (first_ref - base_ref).abs().max() > 50 * tolerance

    # The three rows read the prompt in one step, then decode one token each in the next.
    out = runner.forward(
        [
            Segment(0, 0, prompt, all_logits=True),
            Segment(1, 0, prompt, all_logits=True, adapter=adapter_1),
            Segment(2, 0, prompt, all_logits=True, adapter=adapter_2),
        ]
    )
    for got, reference in zip(out, (base_ref, first_ref, second_ref), strict=True):
        assert (got - reference).abs().max() < tolerance

    token = int(first_ref[-1].argmax())
    with torch.no_grad():
        refs = [m(torch.tensor([prompt + [token]])).logits[0, -1] for m in (model, first, second)]
    step = runner.forward(
        [
            Segment(0, len(prompt), [token]),
            Segment(1, len(prompt), [token], adapter=adapter_1),
            Segment(2, len(prompt), [token], adapter=adapter_2),
        ]
    )
    for got, reference in zip(step, refs, strict=True):
        assert (got[0] - reference).abs().max() < tolerance
    # A step where every row uses one adapter takes the no-gather path: same answer.
    alone = runner.forward([Segment(1, len(prompt), [token], adapter=adapter_1)])
    assert (alone[0][0] - refs[1]).abs().max() < tolerance


def test_the_engine_generates_with_an_adapter_as_peft_does(tiny, tmp_path):
    model, tokenizer = tiny
    peft_model = make_adapter(model, tmp_path / "a", seed=3)
    engine = Engine(model, tokenizer, max_rows=2, max_context=128)
    adapter = load_adapter("a", tmp_path / "a", engine.runner)
    prompt = ids(tokenizer, "Once upon a time")
    greedy = SamplingParams(temperature=0, max_tokens=6)
    tokens, _ = run(
        engine,
        [Request("base", prompt, greedy), Request("adapted", prompt, greedy, adapter=adapter)],
    )
    expected = {}
    for name, reference in (("base", model), ("adapted", peft_model)):
        sequence = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                sequence.append(int(reference(torch.tensor([sequence])).logits[0, -1].argmax()))
        expected[name] = sequence[len(prompt) :]
    assert tokens["base"] == expected["base"][: len(tokens["base"])]
    assert tokens["adapted"] == expected["adapted"][: len(tokens["adapted"])]
    assert tokens["base"] != tokens["adapted"]


def test_an_adapter_for_another_model_is_refused(tiny, real, tmp_path):
    tiny_model, _ = tiny
    make_adapter(tiny_model, tmp_path / "tiny", seed=4)
    runner = LlamaRunner(real[0], max_slots=1, max_context=64)
    with pytest.raises(AdapterError, match="trained for another model"):
        load_adapter("tiny", tmp_path / "tiny", runner)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "only LoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "biases"),
    ],
)
def test_adapters_the_server_cannot_apply_exactly_are_refused(tiny, tmp_path, change, message):
    model, _ = tiny
    make_adapter(model, tmp_path / "a", seed=5)
    config, tensors = read_adapter(tmp_path / "a")
    with pytest.raises(AdapterError, match=message):
        build_adapter("a", {**config, **change}, tensors, LlamaRunner(model, max_slots=1, max_context=64))


def test_broken_adapter_files_get_clear_errors(tiny, tmp_path):
    model, _ = tiny
    runner = LlamaRunner(model, max_slots=1, max_context=64)
    not_zip = tmp_path / "adapter.zip"
    not_zip.write_bytes(b"hello")
    with pytest.raises(AdapterError, match="not a zip"):
        load_adapter("x", not_zip, runner)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("README.md", "nothing here")
    with pytest.raises(AdapterError, match="adapter_config.json and adapter_model.safetensors"):
        load_adapter("x", empty, runner)
    with pytest.raises(AdapterError, match="gone"):
        load_adapter("x", tmp_path / "missing.zip", runner)
    make_adapter(model, tmp_path / "a", seed=6)
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_adapter("x", tmp_path / "a", runner)
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="safetensors"):
        load_adapter("x", tmp_path / "a", runner)


def test_the_cache_drops_the_least_recently_used_adapter_unless_it_is_in_use():
    cache = AdapterCache(capacity=2)
    a, b, c, d = (object() for _ in range(4))
    cache.put("a", a, in_use=set())
    cache.put("b", b, in_use=set())
    assert cache.get("a") is a  # "b" is now the least recently used
    cache.put("c", c, in_use=set())
    assert cache.get("b") is None and cache.get("a") is a and cache.get("c") is c
    cache.put("d", d, in_use={"a", "c"})  # both older ones busy: the cache runs over for now
    assert len(cache) == 3
