"""How fast this machine streams weights through a mat-vec: the memory-bandwidth ceiling.

A decoding step with one learner multiplies one row by every weight of the model, so it can be
no faster than memory delivers those bytes. How fast that is, is measured here rather than
taken from a data sheet: one mat-vec over a matrix as large as the model's weights (far past
every cache), done each way PyTorch offers, and the fastest way is the ceiling. A slow kernel
must not lower the ceiling: on a CPU with bfloat16 instructions, oneDNN's bfloat16 mat-vec
reads memory faster than MKL's float32 one (40 to 51 against 26 GB/s on the development
machine, two threads), so both are measured.

Used by bench_model_server.py (the single-stream ceiling) and bench_kernels.py.
"""

from __future__ import annotations

import statistics
import time


def _median_seconds(run, repeats: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def matvec_bandwidths(weight_bytes: int) -> dict[str, float]:
    """Bytes per second of one mat-vec over `weight_bytes` of weights, per way of doing it."""
    import torch
    import torch.nn.functional as F

    from workers.inference.runner import _can_pack

    inputs = 4096

    def rate(dtype: torch.dtype, product) -> float:
        matrix = torch.randn(weight_bytes // dtype.itemsize // inputs, inputs).to(dtype)  # [out, in]
        vector = torch.randn(1, inputs).to(dtype)
        with torch.inference_mode():  # as the runner multiplies (packed weights need it)
            return weight_bytes / _median_seconds(product(matrix, vector))

    def plain(w, x):
        return lambda: F.linear(x, w)

    def transposed(w, x):  # [in, out], as the runner lays out float32 weights
        t = w.t().contiguous()
        return lambda: x @ t

    def packed(w, x):  # oneDNN's blocked layout, as the runner lays out bfloat16 weights
        w = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        return lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")

    results = {
        "float32 F.linear": rate(torch.float32, plain),
        "float32 x @ w": rate(torch.float32, transposed),
        "bfloat16 F.linear": rate(torch.bfloat16, plain),
    }
    if _can_pack():
        results["bfloat16 oneDNN packed"] = rate(torch.bfloat16, packed)
    return results


def describe(bandwidths: dict[str, float]) -> str:
    return ", ".join(f"{name} {value / 1e9:.1f} GB/s" for name, value in bandwidths.items())
