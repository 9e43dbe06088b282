"""Loading the course model at 32, 8 and 4 bits with bitsandbytes, and measuring what changed.

`compare_quantizations` is what the quantization job runs: a model folder and a prompt in, one
`VariantResult` per precision out. It loads the variants one at a time (freeing each before the
next, so the peak is one model), and for each measures its memory footprint, how long it took
to load, the next-token distribution on the prompt (its top candidates, and its KL divergence
from the 32-bit one) and how fast it generates greedily. No Django here; torch, transformers and
bitsandbytes are imported inside the functions, so importing this module costs nothing.

What bitsandbytes does on a CPU (0.50, checked on the 2-core development machine): it replaces
every nn.Linear of the decoder layers by Linear8bitLt (int8 weights, one scale per row; the
inputs are cast to fp16 for the product) or Linear4bit (NF4: 4-bit codes in blocks of 64 with
one scale per block; the product is computed in fp32). The embedding table, which SmolLM2 shares
with its output layer, and the norms stay at 32 bits, which is why 8 bits do not divide the
footprint by 4.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

MAX_PROMPT_CHARS = 300
MAX_NEW_TOKENS = 64
MAX_TOP_K = 20

Report = Callable[[str, "float | None"], None]


def _ignore(stage: str, progress: float | None) -> None:
    pass


def _never() -> bool:
    return False


class ComparisonStopped(Exception):
    """The comparison was asked to stop (should_stop returned True); nothing is kept."""


@dataclass(frozen=True)
class Variant:
    name: str  # "fp32", "int8", "nf4": a key in results and URLs
    label: str  # for people
    bits: int


FP32 = Variant("fp32", "32-bit floats", 32)
INT8 = Variant("int8", "8-bit integers (LLM.int8)", 8)
NF4 = Variant("nf4", "4-bit NormalFloat (NF4)", 4)
VARIANTS: tuple[Variant, ...] = (FP32, INT8, NF4)


@dataclass(frozen=True)
class Candidate:
    token_id: int
    text: str
    probability: float


@dataclass
class VariantResult:
    name: str
    label: str
    bits: int
    # Set when this variant could not be loaded or run here; then the measurements are empty.
    error: str = ""
    footprint_bytes: int = 0  # model.get_memory_footprint(): parameters and buffers
    weight_bytes: int = 0  # the parameters alone, as stored (4-bit codes are packed two to a byte)
    kept_fp32_bytes: int = 0  # of which the embedding table (shared with the output layer) and norms
    quantized_layers: int = 0  # linear layers bitsandbytes replaced
    load_seconds: float = 0.0
    generate_seconds: float = 0.0
    tokens_per_second: float = 0.0
    continuation: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    kl_from_fp32: float | None = None  # KL(p_fp32 || p_variant) in nats, over the whole vocabulary
    top1_changed: bool | None = None
    # The probability this variant gives to the 32-bit model's first choice.
    p_fp32_top1: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class ComparisonResult:
    prompt: str
    prompt_tokens: int
    new_tokens: int
    variants: list[VariantResult]
    seconds: float
    versions: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for the job's metrics)."""
        return asdict(self)


def check_settings(prompt: str, new_tokens: int, top_k: int) -> str:
    """The prompt to use (stripped), or ValueError with a message for the learner."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("Type a prompt: the model needs some text to continue.")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"Keep the prompt to {MAX_PROMPT_CHARS} characters or fewer (it has {len(prompt):,}).")
    if not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"The number of tokens to time must be between 1 and {MAX_NEW_TOKENS}.")
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"The number of candidates must be between 1 and {MAX_TOP_K}.")
    return prompt


def library_versions() -> dict[str, str]:
    """The versions that decide the numbers; read from the installed metadata, importing nothing."""
    found = {}
    for name in ("torch", "transformers", "bitsandbytes"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def compare_quantizations(
    model_path: Path | str,
    prompt: str,
    new_tokens: int = 16,
    top_k: int = 8,
    *,
    variants: Sequence[Variant] = VARIANTS,
    report: Report = _ignore,
    should_stop: Callable[[], bool] = _never,
    threads: int | None = None,
) -> ComparisonResult:
    """Loads the model at each precision in turn and measures it on `prompt`.

    The first variant must be FP32: the others' distributions are compared with it. A quantized
    variant that fails to load or run here (bitsandbytes missing, a platform it does not support)
    gets an `error` saying why instead of numbers; a failing FP32 raises. `should_stop` is
    checked between variants and after every generated token; when it says stop, this raises
    ComparisonStopped. `report(stage, progress)` gets progress from 0 to 1. `threads` sets
    torch's CPU threads for the process (None leaves them as they are).
    Raises ValueError (a message for the learner) for bad settings.
    """
    prompt = check_settings(prompt, new_tokens, top_k)
    if not variants or variants[0] != FP32:
        raise ValueError("the first variant must be FP32: the others are compared with it")
    started = time.perf_counter()
    report("Loading torch and transformers", 0.0)
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    # bitsandbytes logs a warning at every 8-bit product (it casts fp32 inputs to fp16): said once
    # in the lab's text instead of thousands of times in the worker's log.
    # Its CPU backend also says, when imported, that it could not fetch an optional kernel from
    # the Hugging Face hub (it then uses its own): nothing the learner can act on either.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # the "Loading weights" bars, one per variant, in the worker's log
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    inputs = tokenizer(prompt, return_tensors="pt")
    prompt_tokens = int(inputs["input_ids"].shape[1])

    results: list[VariantResult] = []
    reference = None  # the 32-bit model's log-probabilities of the next token
    stop = _guarded(should_stop)
    for index, variant in enumerate(variants):
        if stop():
            raise ComparisonStopped

        def step(stage: str, within: float, index: int = index, variant: Variant = variant) -> None:
            _guarded(report)(f"{stage} ({variant.bits}-bit)", (index + within) / len(variants))

        result = VariantResult(variant.name, variant.label, variant.bits)
        try:
            log_probs = _measure(model_path, variant, inputs, new_tokens, top_k, tokenizer, result, step, stop)
        except ComparisonStopped:
            raise
        except _CallbackFailed as failed:  # the caller's own exception (e.g. its job was lost): theirs
            raise failed.original from None
        except Exception as exc:
            if variant == FP32:
                raise
            # Whatever was measured before it failed is dropped: an error, and no numbers.
            results.append(VariantResult(variant.name, variant.label, variant.bits, error=_explain(variant, exc)))
            continue
        if reference is None:
            reference = log_probs
        _compare(reference, log_probs, result)
        results.append(result)
        del log_probs
        gc.collect()

    report("Measured every variant", 1.0)
    return ComparisonResult(
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        variants=results,
        seconds=time.perf_counter() - started,
        versions=library_versions(),
    )


def _measure(
    model_path: Path | str,
    variant: Variant,
    inputs: Any,
    new_tokens: int,
    top_k: int,
    tokenizer: Any,
    result: VariantResult,
    step: Callable[[str, float], None],
    should_stop: Callable[[], bool],
) -> Any:
    """Fills `result` with one variant's measurements; returns its next-token log-probabilities."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    step("Loading the model", 0.0)
    loaded = time.perf_counter()
    model = load_variant(model_path, variant)
    try:
        result.load_seconds = time.perf_counter() - loaded
        result.footprint_bytes = int(model.get_memory_footprint())
        result.weight_bytes, result.kept_fp32_bytes, result.quantized_layers = _weights(model)
        if should_stop():
            raise ComparisonStopped

        step("Reading the prompt", 0.3)
        with torch.inference_mode():
            logits = model(**inputs).logits[0, -1].to(torch.float64)
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            top = torch.topk(probs, top_k)
            result.candidates = [
                Candidate(int(token), tokenizer.decode([int(token)]), float(p))
                for p, token in zip(top.values, top.indices, strict=True)
            ]

            class EveryToken(StoppingCriteria):
                """Reports each generated token and lets a cancel stop the generation at once."""

                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    done = input_ids.shape[1] - inputs["input_ids"].shape[1]
                    if should_stop():
                        raise ComparisonStopped
                    step(f"Generating {new_tokens} tokens", 0.4 + 0.6 * done / new_tokens)
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool)

            step(f"Generating {new_tokens} tokens", 0.4)
            generating = time.perf_counter()
            output = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # always the same number of tokens: comparable speeds
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([EveryToken()]),
            )
            result.generate_seconds = time.perf_counter() - generating
        generated = output[0, inputs["input_ids"].shape[1] :]
        result.tokens_per_second = len(generated) / result.generate_seconds if result.generate_seconds else 0.0
        result.continuation = tokenizer.decode(generated, skip_special_tokens=True)
        return log_probs
    finally:
        del model
        gc.collect()


def load_variant(model_path: Path | str, variant: Variant) -> Any:
    """The model at `variant`'s precision, on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if variant == FP32:
        options: dict[str, Any] = {"dtype": torch.float32}
    elif variant == INT8:
        options = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    elif variant == NF4:
        options = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
            )
        }
    else:
        raise ValueError(f"unknown variant {variant.name!r}")
    # device_map: bitsandbytes quantizes the weights as they are placed on the device.
    model = AutoModelForCausalLM.from_pretrained(str(model_path), device_map="cpu", **options)
    model.eval()
    return model


def _weights(model: Any) -> tuple[int, int, int]:
    """(bytes of all parameters as stored, bytes of those left in floating point, quantized layers)."""
    total = kept = 0
    for parameter in model.parameters():
        size = parameter.numel() * parameter.element_size()
        total += size
        if parameter.dtype.is_floating_point:
            kept += size
    quantized = sum(1 for module in model.modules() if type(module).__name__ in ("Linear8bitLt", "Linear4bit"))
    return total, kept, quantized


def _compare(reference: Any, log_probs: Any, result: VariantResult) -> None:
    """KL(p_ref || p) over the whole vocabulary, whether the top-1 moved, and p of the old top-1."""
    import torch

    p_ref = reference.exp()
    # 0 * log(0/q) counts as 0; exp of a float64 log_softmax is never exactly 0 here anyway.
    kl = float(torch.sum(torch.where(p_ref > 0, p_ref * (reference - log_probs), torch.zeros_like(p_ref))))
    # Rounding can make an identical distribution come out at -1e-17: it is 0.
    result.kl_from_fp32 = max(kl, 0.0) if math.isfinite(kl) else float("inf")
    top_ref = int(torch.argmax(reference))
    result.top1_changed = int(torch.argmax(log_probs)) != top_ref
    result.p_fp32_top1 = float(log_probs[top_ref].exp())


class _CallbackFailed(Exception):
    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    """`callback`, with its exceptions marked as its own, so they are never taken for a variant
    that failed to load or run (and reported as such) but reach the caller unchanged.
    """

    def call(*args: Any) -> Any:
        try:
            return callback(*args)
        except Exception as exc:
            raise _CallbackFailed(exc) from exc

    return call


def _explain(variant: Variant, exc: Exception) -> str:
    """What to tell the learner when a quantized variant cannot run here."""
    detail = f"{type(exc).__name__}: {exc}".strip()
    if len(detail) > 300:
        detail = detail[:300] + "…"
    message = str(exc).lower()
    if isinstance(exc, ImportError) or ("bitsandbytes" in message and "install" in message):
        return (
            f"The {variant.bits}-bit model could not be loaded: bitsandbytes is not installed on the worker "
            f"({detail}). Nothing is shown rather than made-up numbers."
        )
    return (
        f"bitsandbytes could not load or run the {variant.bits}-bit model on this machine ({detail}). "
        "Nothing is shown rather than made-up numbers."
    )
