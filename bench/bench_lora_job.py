"""The LoRA job's training function against a plain hand-written PEFT training loop.

    .venv/bin/python bench/bench_lora_job.py [--steps 20] [--pairs 2] [--batch 4] [--seq-len 128]

Both train the course model with the same LoRA settings (rank 8, alpha 16, dropout 0.05, q/k/v/o,
AdamW at 2e-4, seed 0) on the same batches of the built-in Shakespeare dataset, in this process,
one after the other (the order alternates between pairs, so neither always runs on a warmer
machine). Prints, per pair and as medians:

- training tokens/s of each: tokens in the batches over the time of the steps (forward,
  backward, optimizer step), and their ratio (the goal: at least 0.9x);
- the job's whole loop (its steps plus what the job adds: validation loss at five points,
  checkpoints, progress reports) against the plain loop's, as a ratio;
- the job's peak memory as the job measures it (the process's peak RSS, sampled every 20 ms,
  and its growth over the RSS before the model was loaded), and the plain loop's the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_dir() -> Path:
    return Path(os.environ.get("MODEL_PATH") or ROOT / "var" / "models" / "smollm2-135m-instruct")


def plain_loop(folder: Path, batches: list, hp) -> dict:
    """The baseline: PEFT and AdamW written out by hand, nothing else."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workers.training.lora import MemoryMeter

    with MemoryMeter("cpu") as memory:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        torch.manual_seed(hp.seed)
        config = LoraConfig(
            r=hp.rank,
            lora_alpha=hp.alpha,
            lora_dropout=hp.dropout,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)
        model.train()
        tokens, step_seconds = 0, 0.0
        started = time.perf_counter()
        for ids, mask, labels in batches:
            step_started = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            step_seconds += time.perf_counter() - step_started
            tokens += int(mask.sum())
        loop = time.perf_counter() - started
    return {"tokens": tokens, "step_seconds": step_seconds, "loop_seconds": loop, "memory": memory.result()}


def job_function(folder: Path, dataset, hp) -> dict:
    from workers.training.lora import train_lora

    with tempfile.TemporaryDirectory() as work:
        result = train_lora(folder, dataset, hp, Path(work), device="cpu")
    metrics = result.metrics
    return {
        "tokens": metrics["tokens"],
        "step_seconds": metrics["train_seconds"],
        "loop_seconds": metrics["loop_seconds"],
        "memory": metrics["memory"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    options = parser.parse_args()

    import torch

    from workers.training.lora import Codec, DatasetSource, LoraHyperParameters, batch_indices, build_dataset

    folder = model_dir()
    hp = LoraHyperParameters(
        max_steps=options.steps,
        batch_size=options.batch,
        seq_len=options.seq_len,
        checkpoint_every=max(options.steps // 2, 1),
    )
    dataset = build_dataset(DatasetSource("shakespeare"), Codec(folder), hp.seq_len, hp.seed)
    # The very batches the job takes, step by step, padded by hand (only the last window is short).
    batches = []
    for step in range(options.steps):
        rows = [dataset.train[index].input_ids for index in batch_indices(step, len(dataset.train), hp)]
        width = max(map(len, rows))
        ids = torch.tensor([row + [dataset.pad_id] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        batches.append((ids, mask, ids.masked_fill(mask == 0, -100)))
    print(
        f"model {folder.name}, torch threads {torch.get_num_threads()}; {options.steps} steps of "
        f"{options.batch} x {options.seq_len} tokens, rank {hp.rank}, {len(dataset.train)} training windows"
    )
    # Warm up first (thread pools, oneDNN's kernels, the file cache): the first steps of a
    # process are several times slower than the rest, whichever loop takes them.
    plain_loop(folder, batches[:2], hp)
    step_ratios, loop_ratios, job_memory, plain_memory = [], [], [], []
    for pair in range(options.pairs):
        runs = {}
        for name in ("job", "plain") if pair % 2 == 0 else ("plain", "job"):
            runs[name] = job_function(folder, dataset, hp) if name == "job" else plain_loop(folder, batches, hp)
        job, plain = runs["job"], runs["plain"]
        job_rate, plain_rate = job["tokens"] / job["step_seconds"], plain["tokens"] / plain["step_seconds"]
        step_ratios.append(job_rate / plain_rate)
        loop_ratios.append((job["tokens"] / job["loop_seconds"]) / (plain["tokens"] / plain["loop_seconds"]))
        job_memory.append(job["memory"])
        plain_memory.append(plain["memory"])
        print(
            f"  pair {pair + 1}: job {job_rate:.0f} tok/s, plain loop {plain_rate:.0f} tok/s: {step_ratios[-1]:.2f}x; "
            f"whole loop {job['loop_seconds']:.1f} s vs {plain['loop_seconds']:.1f} s: {loop_ratios[-1]:.2f}x; "
            f"peak RSS job {job['memory']['peak_mb']:.0f} MB (+{job['memory']['growth_mb']:.0f}), "
            f"plain {plain['memory']['peak_mb']:.0f} MB (+{plain['memory']['growth_mb']:.0f})"
        )
    step_ratio = statistics.median(step_ratios)
    print(
        f"training tokens/s, job function / plain PEFT loop, median of {options.pairs}: {step_ratio:.2f}x (goal >= 0.9x)"
    )
    print(
        f"whole loop with the job's validation, checkpoints and reports: {statistics.median(loop_ratios):.2f}x "
        "of the plain loop's tokens/s"
    )
    first = job_memory[0]
    print(
        f"peak memory of the training job (first run, process RSS): {first['peak_mb']:.0f} MB, "
        f"+{first['growth_mb']:.0f} MB over the RSS before loading the model"
    )
    return 0 if step_ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
