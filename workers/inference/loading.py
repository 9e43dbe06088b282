"""Loading a model folder for serving: the best device, the right precision, the tokenizer."""

from __future__ import annotations

import os
from pathlib import Path


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bfloat16() -> bool:
    """True on CPUs with bfloat16 instructions (AVX-512 BF16 or AMX), where oneDNN multiplies
    bfloat16 matrices about twice as fast as float32 ones once several rows share a step."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def model_threads(setting: int = 0) -> int:
    """CPU threads for the model server: `setting` (MODEL_THREADS), or for 0 one less than the
    cores, at least one. The spare core is the web server's, Redis's and the worker's: with every
    core busy, torch's threads wait on each other at every barrier (README.md, Benchmarks)."""
    return setting or max(1, (os.cpu_count() or 2) - 1)


def serving_dtype(device: str, name: str = "auto"):
    """The torch dtype to serve in: `name` (float32, bfloat16, float16), or for "auto" bfloat16
    on a GPU and on a CPU with native bfloat16 instructions, float32 on other CPUs (there
    bfloat16 products are emulated and slower than float32)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") or cpu_has_native_bfloat16():
        return torch.bfloat16
    return torch.float32


def load_model(folder: Path, device: str | None = None, dtype: str = "float32"):
    """(model, tokenizer) for a Hugging Face causal-LM folder, ready for the engine.

    `dtype` as in `serving_dtype`: the model server passes the MODEL_DTYPE setting; tests and
    benchmarks that compare with Hugging Face's own float32 results keep the default.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from workers.inference.tokenizer import load_tokenizer

    device = device or best_device()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=serving_dtype(device, dtype)).to(device).eval()
    return model, load_tokenizer(Path(folder))


def tiny_model(vocab_size: int, seed: int = 0):
    """A small random Llama with the course tokenizer's vocabulary, for fast engine tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=2,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()
