"""Benchmark: decoding with many learners' LoRA adapters in one batch, against the base model alone.

The model server's batching engine (workers/inference/engine.py) runs in this process on the
course model, with 16 rows decoding together. Every configuration decodes the same prompts
for the same number of tokens (greedy); only the adapters the rows use differ:

    base         no row uses an adapter (the baseline)
    1 adapter    every row uses the same adapter
    4 adapters   rows take 4 different adapters in turn
    16 adapters  every row has its own

The adapters are rank 8 on q, k, v and o (the LoRA lab's default) with random weights: the
speed does not depend on what they learned. Only steps where every row decodes are timed
(prompt reading is the same work with or without adapters, and is timed in
bench_model_server.py). Configurations are interleaved, `--rounds` times, and the median of
each is reported, so a slow moment of the machine does not land on one configuration.

    .venv/bin/python bench/bench_adapters.py
    .venv/bin/python bench/bench_adapters.py --rows 16 --tokens 48 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "courseapp.settings_test")

from bench.bench_model_server import PROMPTS  # noqa: E402 (the same prompts as the server benchmark)

CONFIGS = {"base": 0, "1 adapter": 1, "4 adapters": 4, "16 adapters": 16}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def random_adapter(name: str, runner, rank: int, seed: int):
    """A LoRA adapter with PEFT's tensor names and random weights, laid out for the runner."""
    import torch

    from workers.inference.adapters import build_adapter

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, layer in enumerate(runner.layers):
        for projection in TARGETS:
            out_features, in_features = getattr(layer.self_attn, projection).weight.shape
            prefix = f"base_model.model.model.layers.{index}.self_attn.{projection}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS)}
    return build_adapter(name, config, tensors, runner)


def decode_rate(engine, tokenizer, adapters: list, rows: int, tokens: int) -> float:
    """Tokens per second over the steps in which every row decodes."""
    from workers.inference.engine import Request
    from workers.inference.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens)
    for i in range(rows):
        prompt = tokenizer.encode(PROMPTS[i % len(PROMPTS)], add_special_tokens=False).ids
        adapter = adapters[i % len(adapters)] if adapters else None
        engine.submit(Request(f"r{i}", prompt, params, adapter=adapter))
    decoded, seconds = 0, 0.0
    while engine.has_work():
        decoding = len(engine.rows) == rows and not any(row.reading for row in engine.rows)
        started = time.perf_counter()
        events = engine.step()
        if decoding:
            seconds += time.perf_counter() - started
            decoded += sum(1 for event in events if event.kind == "token")
    return decoded / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server's default here: cores - 1)")
    options = parser.parse_args()

    import django

    django.setup()
    import torch
    from django.conf import settings

    from workers.inference.engine import Engine
    from workers.inference.loading import load_model

    torch.set_num_threads(options.threads)
    model, tokenizer = load_model(settings.MODEL_PATH, "cpu")
    engine = Engine(model, tokenizer, max_rows=options.rows, max_context=256)
    pool = [random_adapter(f"a{i}", engine.runner, options.rank, seed=i) for i in range(max(CONFIGS.values()))]
    print(f"{settings.MODEL_PATH.name} on the CPU, {options.threads} thread(s), {options.rows} rows decoding "
          f"{options.tokens} tokens, rank-{options.rank} adapters on {', '.join(TARGETS)}; "
          f"{options.rounds} rounds, median shown")  # fmt: skip

    decode_rate(engine, tokenizer, [], options.rows, 8)  # warm up
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(options.rounds):
        for name, count in CONFIGS.items():
            rates[name].append(decode_rate(engine, tokenizer, pool[:count], options.rows, options.tokens))

    base = statistics.median(rates["base"])
    print(f"{'configuration':<14}{'tokens/s':>10}{'vs base':>10}")
    for name in CONFIGS:
        rate = statistics.median(rates[name])
        print(f"{name:<14}{rate:>10.1f}{rate / base:>9.2f}x")
    four = statistics.median(rates["4 adapters"]) / base
    print(f"goal: 4 adapters at least 0.75x of base: {'met' if four >= 0.75 else 'NOT met'} ({four:.2f}x)")


if __name__ == "__main__":
    main()
