"""Benchmark: the kernel choices inside the model server's forward pass, each against the
plain alternative, on the real model's weights in one process.

    .venv/bin/python bench/bench_kernels.py                  # the server's precision (MODEL_DTYPE=auto)
    .venv/bin/python bench/bench_kernels.py --dtype float32

1. Weight layout: the products of one decoding token (every layer's q/k/v, o, gate/up and down
   matrices and the output layer, one row each) with the runner's layout against plain
   [out, in] matrices and F.linear. Also shown as bytes per second next to one large mat-vec.
2. Attention of decoding rows, each key/value head's query heads stacked: PyTorch's fused
   kernel against two plain products and a float32 softmax (the runner picks by the size).
3. A whole decoding step of the runner, 1 and 16 rows, with its layout against plain weights.

Medians of repeated runs, the two sides interleaved so that the machine's drift hits both.
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


def interleaved(first, second, repeats: int = 30, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of `first()` and `second()`, run turn about."""
    for _ in range(warmup):
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for function, sink in ((first, times[0]), (second, times[1])):
            began = time.perf_counter()
            function()
            sink.append(time.perf_counter() - began)
    return statistics.median(times[0]), statistics.median(times[1])


def token_products(runner, plain) -> tuple[float, float, int]:
    """(seconds with the runner's layout, seconds with plain weights, weight bytes) for the
    one-row products of one decoding token."""
    import torch

    x_hidden = torch.randn(1, runner.config.hidden_size, dtype=runner.dtype)
    x_mlp = torch.randn(1, runner.config.intermediate_size, dtype=runner.dtype)

    def products(r):
        @torch.inference_mode()  # as the runner's forward: outside it oneDNN copies packed weights
        def run():
            for index in range(len(r.layers)):
                r._product(x_hidden, r.qkv[index])
                r._product(x_hidden, r.o[index])
                r._product(x_hidden, r.gate_up[index])
                r._product(x_mlp, r.down[index])
            r._product(x_hidden, r.lm_head)

        return run

    mine, theirs = interleaved(products(runner), products(plain))
    weights = [*plain.qkv, *plain.o, *plain.gate_up, *plain.down, plain.lm_head]
    return mine, theirs, sum(w.numel() * w.element_size() for w in weights)


def attention(runner, rows: int, length: int) -> tuple[float, float]:
    import torch

    q = torch.randn(rows, runner.n_heads, 1, runner.head_dim, dtype=runner.dtype)
    # Keys and values as the runner has them: the first `length` positions of a larger cache.
    k = torch.randn(rows, runner.n_kv, 2 * length, runner.head_dim, dtype=runner.dtype)[:, :, :length]
    v = torch.randn(rows, runner.n_kv, 2 * length, runner.head_dim, dtype=runner.dtype)[:, :, :length]
    allowed = torch.arange(length)[None, :] <= torch.randint(0, length, (rows,))[:, None]
    mask = runner._grouped(allowed[:, None, None, :])
    stacked = q.reshape(rows, runner.n_kv, -1, runner.head_dim)
    with torch.inference_mode():
        return interleaved(
            lambda: torch.nn.functional.scaled_dot_product_attention(stacked, k, v, attn_mask=mask),
            lambda: runner._attention_products(stacked, k, v, mask),
            repeats=100,
        )


def decode_step(runner, plain, tokenizer, rows: int) -> tuple[float, float]:
    from workers.inference.runner import Segment

    prompt = tokenizer.encode("The cat sat on the mat and looked out of the window at the").ids
    for r in (runner, plain):
        for slot in range(rows):
            r.forward([Segment(slot, 0, prompt)])
    position = [len(prompt)]

    def step(r):
        def run():
            r.forward([Segment(slot, position[0], [100 + slot]) for slot in range(rows)])

        return run

    def advance():
        position[0] += 1

    # Both runners decode the same positions: the plain one's step moves the position on.
    mine, theirs = interleaved(step(runner), lambda: (step(plain)(), advance()), repeats=25)
    return mine, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (the server's choice)")
    args = parser.parse_args()

    import django

    django.setup()
    import torch
    from django.conf import settings

    from bench.bandwidth import describe, matvec_bandwidths
    from workers.inference.loading import load_model, serving_dtype
    from workers.inference.runner import LlamaRunner

    dtype = str(serving_dtype("cpu", args.dtype)).removeprefix("torch.")
    model, tokenizer = load_model(settings.MODEL_PATH, "cpu", dtype)
    runner = LlamaRunner(model, max_slots=16, max_context=512)
    plain = LlamaRunner(model, max_slots=16, max_context=512, layout="plain")
    print(f"{dtype} on the CPU, torch threads: {torch.get_num_threads()}; the runner's weight layout: {runner.layout}")

    mine, theirs, weight_bytes = token_products(runner, plain)
    bandwidths = matvec_bandwidths(weight_bytes)
    print("\n1. one-row products of one token, all layers and the output layer")
    print(f"   {runner.layout:>10}: {mine * 1e3:6.1f} ms = {weight_bytes / mine / 1e9:5.1f} GB/s")
    print(f"   {'plain':>10}: {theirs * 1e3:6.1f} ms = {weight_bytes / theirs / 1e9:5.1f} GB/s")
    print(f"   {runner.layout} is {theirs / mine:.2f}x plain")
    print(f"   one mat-vec over as many bytes, each way: {describe(bandwidths)}")

    print("\n2. attention of decoding rows, stacked heads: fused kernel vs two products")
    for rows, length in ((1, 64), (1, 320), (2, 64), (4, 64), (4, 320), (16, 64), (16, 320)):
        fused, manual = attention(runner, rows, length)
        print(
            f"   {rows:2} rows x {length:3} positions: {fused * 1e6:6.0f} us vs {manual * 1e6:6.0f} us"
            f" = {manual / fused:.2f}x"
        )

    print(f"\n3. a decoding step of the runner, {runner.layout} vs plain weights")
    for rows in (1, 16):
        mine, theirs = decode_step(runner, plain, tokenizer, rows)
        print(f"   {rows:2} rows: {mine * 1e3:6.1f} ms vs {theirs * 1e3:6.1f} ms = {theirs / mine:.2f}x")


if __name__ == "__main__":
    main()
