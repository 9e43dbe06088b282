"""Loading a model folder for serving: the best device, the right precision, the tokenizer."""

from __future__ import annotations

import os
from pathlib import Path


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(folder: Path, device: str | None = None):
    """(model, tokenizer) for a Hugging Face causal-LM folder, ready for the engine.

    float32 on a CPU (bfloat16 has no fast kernels on CPUs without native support, and the
    course model is small); bfloat16 on a GPU.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from workers.inference.tokenizer import load_tokenizer

    device = device or best_device()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
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
