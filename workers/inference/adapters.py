"""LoRA adapters for the batching runner: read a PEFT adapter, fold it into the runner's layout.

A LoRA adapter changes a linear layer `y = x W` into `y = x W + s (x A) B`, with A [in, r],
B [r, out] and s = alpha / r (alpha / sqrt(r) for rsLoRA). The base weights stay untouched and
shared, so rows with different adapters (and rows with none) can go through one forward pass:
the runner adds each adapter's small product to its own rows only.

The runner fuses q, k and v into one matrix and gate and up into another; an adapter is laid
out the same way here, once, when it is loaded:

- A of the fused layer is the adapted projections' A side by side: [in, r_q + r_k + r_v];
- B is block-diagonal, each projection's B (times its scale) in its own columns, zeros for a
  projection the adapter leaves alone.

So each fused layer costs two thin matrix products per adapter, whatever it targets.

When a step mixes rows of several adapters (and rows with none), their matrices are stacked:
A side by side, B one above the other. One product `x A_stack` gives every row the inputs of
every adapter's update; a mask keeps each row's own adapter's columns (none for a base row),
and one product with B_stack adds the updates. Two products per layer however many adapters
share the step, instead of a gather, two products and a scatter per adapter. The stacks are
built once per set of adapters and kept while the batch keeps that set.

What is read: a folder or a zip with `adapter_config.json` and `adapter_model.safetensors` at
its root, as `PeftModel.save_pretrained` writes them (and as the LoRA jobs' adapter.zip holds).
Anything this runner cannot apply exactly (DoRA, extra trained modules, other layers) is refused
with a message, never half applied.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_ADAPTER_BYTES = 512 * 1024 * 1024

# Fused layer of the runner -> the projections it is made of, in order.
FUSED = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
PROJECTION_TO_FUSED = {name: fused for fused, names in FUSED.items() for name in names}
KEY_RE = re.compile(r"(?:.*\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")


class AdapterError(Exception):
    """This adapter cannot be used with this model; the message says why, for the learner."""


@dataclass
class LoraAdapter:
    name: str
    rank: int
    targets: tuple[str, ...]
    # (layer index, fused layer name) -> (A [in, R], B [R, out] with the scale folded in)
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.weights.values())


def read_adapter(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) from an adapter folder or zip. Raises AdapterError."""
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    try:
        if path.is_dir():
            config_bytes = (path / CONFIG_FILE).read_bytes()
            weights_path = path / WEIGHTS_FILE
            if weights_path.stat().st_size > MAX_ADAPTER_BYTES:
                raise AdapterError("the adapter is too large")
            weights_bytes = weights_path.read_bytes()
        else:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if CONFIG_FILE not in names or WEIGHTS_FILE not in names:
                    raise AdapterError(f"the adapter needs {CONFIG_FILE} and {WEIGHTS_FILE} at its top level")
                if archive.getinfo(WEIGHTS_FILE).file_size > MAX_ADAPTER_BYTES:
                    raise AdapterError("the adapter is too large")
                config_bytes = archive.read(CONFIG_FILE)
                weights_bytes = archive.read(WEIGHTS_FILE)
    except FileNotFoundError:
        raise AdapterError("the adapter's files are gone (was the job deleted?)") from None
    except zipfile.BadZipFile:
        raise AdapterError("the adapter file is not a zip archive") from None
    try:
        config = json.loads(config_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON") from None
    try:
        tensors = load_safetensors(weights_bytes)
    except Exception:
        raise AdapterError(f"{WEIGHTS_FILE} is not a readable safetensors file") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} must hold a JSON object")
    return config, tensors


def build_adapter(name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], runner) -> LoraAdapter:
    """Checks the adapter against the runner's model and lays it out for the fused layers."""
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"only LoRA adapters can be served, not {config.get('peft_type')}")
    for option, problem in (
        ("use_dora", "DoRA adapters"),
        ("modules_to_save", "adapters that also train whole layers (modules_to_save)"),
        ("alpha_pattern", "adapters with a different alpha per layer"),
        ("layer_replication", "adapters that replicate layers"),
    ):
        if config.get(option):
            raise AdapterError(f"{problem} are not supported by the model server")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterError("adapters with trained biases are not supported by the model server")

    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = KEY_RE.fullmatch(key)
        if match is None or match.group(2) not in PROJECTION_TO_FUSED:
            raise AdapterError(f"the adapter changes a part of the model the server cannot adapt: {key}")
        layer, projection, side = int(match.group(1)), match.group(2), match.group(3)
        if layer >= len(runner.layers):
            raise AdapterError(f"the adapter has layer {layer}, but this model has {len(runner.layers)} layers")
        pairs.setdefault((layer, projection), {})[side] = tensor
    if not pairs:
        raise AdapterError("the adapter holds no LoRA weights")

    alpha = float(config.get("lora_alpha") or config.get("r") or 8)
    layers = runner.layers
    targets = sorted({projection for _, projection in pairs})
    # Per fused layer and projection: (A [r, in], B [out, r], scale)
    parts: dict[tuple[int, str], list[tuple[str, torch.Tensor, torch.Tensor, float]]] = {}
    rank = 0
    for (layer, projection), sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            raise AdapterError(f"layer {layer} {projection} has only half of its LoRA weights")
        a, b = sides["A"], sides["B"]
        out_features, in_features = _projection(layers[layer], projection).weight.shape
        # The rank comes from the weights themselves, so a rank_pattern needs no reading.
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_features or b.shape != (out_features, r):
            raise AdapterError(
                f"the adapter was trained for another model: layer {layer} {projection} has shapes "
                f"{tuple(a.shape)} and {tuple(b.shape)}, this model needs ({r}, {in_features}) and ({out_features}, {r})"
            )
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        parts.setdefault((layer, PROJECTION_TO_FUSED[projection]), []).append((projection, a, b, scale))
        rank = max(rank, r)

    adapter = LoraAdapter(name=name, rank=rank, targets=tuple(targets))
    dtype, device = runner.dtype, runner.device
    for (layer, fused), items in parts.items():
        sizes = [_out_features(layers[layer], projection) for projection in FUSED[fused]]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        total_rank = sum(a.shape[0] for _, a, _, _ in items)
        in_features = items[0][1].shape[1]
        fused_a = torch.zeros(in_features, total_rank, dtype=torch.float32)
        fused_b = torch.zeros(total_rank, sum(sizes), dtype=torch.float32)
        at = 0
        for projection, a, b, scale in items:
            r = a.shape[0]
            column = offsets[FUSED[fused].index(projection)]
            fused_a[:, at : at + r] = a.float().t()
            fused_b[at : at + r, column : column + b.shape[0]] = b.float().t() * scale
            at += r
        adapter.weights[(layer, fused)] = (
            fused_a.to(device=device, dtype=dtype).contiguous(),
            fused_b.to(device=device, dtype=dtype).contiguous(),
        )
    return adapter


def _projection(layer, projection: str):
    owner = layer.self_attn if projection in FUSED["qkv"] + FUSED["o"] else layer.mlp
    return getattr(owner, projection)


def _out_features(layer, projection: str) -> int:
    return _projection(layer, projection).weight.shape[0]


def load_adapter(name: str, path: Path, runner) -> LoraAdapter:
    config, tensors = read_adapter(path)
    return build_adapter(name, config, tensors, runner)


class AdapterCache:
    """The adapters loaded in one model server, least recently used first out.

    An adapter that a running or queued row still uses is never dropped; the cache may run over
    its size for as long as that lasts.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._adapters: OrderedDict[str, LoraAdapter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._adapters)

    def get(self, key: str) -> LoraAdapter | None:
        adapter = self._adapters.get(key)
        if adapter is not None:
            self._adapters.move_to_end(key)
        return adapter

    def put(self, key: str, adapter: LoraAdapter, in_use: set[str]) -> None:
        self._adapters[key] = adapter
        self._adapters.move_to_end(key)
        for old in list(self._adapters):
            if len(self._adapters) <= self.capacity:
                break
            if old != key and old not in in_use:
                del self._adapters[old]


@dataclass
class _Stacked:
    a: torch.Tensor  # [in, sum of ranks]
    b: torch.Tensor  # [sum of ranks, out]
    columns: torch.Tensor  # [sum of ranks]: which adapter each column belongs to


class AdapterStack:
    """The fused layers of several adapters stacked for one product each (see the top)."""

    def __init__(self, adapters: tuple[LoraAdapter, ...], dtype, device) -> None:
        self.adapters = adapters  # held, so that the ids in StackCache's keys stay theirs
        self.single = len(adapters) == 1
        self.layers: dict[tuple[int, str], _Stacked] = {}
        # Layers with the same column layout (usually all of them) share one `columns` tensor,
        # so a step builds one mask per layout, not one per layer.
        layouts: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}
        keys = {key for adapter in adapters for key in adapter.weights}
        for key in keys:
            parts = [(i, adapter.weights[key]) for i, adapter in enumerate(adapters) if key in adapter.weights]
            layout = tuple((i, a.shape[1]) for i, (a, _) in parts)
            if layout not in layouts:
                owners = [torch.full((rank,), i, dtype=torch.long) for i, rank in layout]
                layouts[layout] = torch.cat(owners).to(device)
            self.layers[key] = _Stacked(
                torch.cat([a for _, (a, _) in parts], dim=1).to(device=device, dtype=dtype),
                torch.cat([b for _, (_, b) in parts], dim=0).to(device=device, dtype=dtype),
                layouts[layout],
            )


class StackCache:
    """The stacks of the last few sets of adapters that shared a step."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._stacks: OrderedDict[tuple[int, ...], AdapterStack] = OrderedDict()

    def get(self, adapters: tuple[LoraAdapter, ...], dtype, device) -> AdapterStack:
        key = tuple(id(adapter) for adapter in adapters)
        stack = self._stacks.get(key)
        if stack is None:
            stack = self._stacks[key] = AdapterStack(adapters, dtype, device)
            while len(self._stacks) > self.capacity:
                self._stacks.popitem(last=False)
        self._stacks.move_to_end(key)
        return stack


class AdapterPlan:
    """One step's adapters: the stack, and which adapter each token row uses (-1: none)."""

    def __init__(self, stack: AdapterStack, owners: torch.Tensor) -> None:
        self.stack = stack
        self.owners = owners
        # Every row on one adapter: no mask at all, the plain LoRA update.
        self.everyone = stack.single and bool((owners == 0).all())
        self._masks: dict[int, torch.Tensor] = {}

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, fused: str) -> None:
        """Adds each row's adapter update (x A) B to y, in place."""
        stacked = self.stack.layers.get((layer, fused))
        if stacked is None:
            return
        inner = x @ stacked.a
        if not self.everyone:
            inner = inner * self._mask(stacked.columns, inner.dtype)
        y.add_(inner @ stacked.b)

    def _mask(self, columns: torch.Tensor, dtype) -> torch.Tensor:
        mask = self._masks.get(id(columns))  # the stack holds `columns`, so its id stays its own
        if mask is None:
            mask = self._masks[id(columns)] = (self.owners[:, None] == columns[None, :]).to(dtype)
        return mask
