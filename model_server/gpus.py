"""How many GPUs this process may use, and how many data-parallel engines fit on them.

A profile whose TP x PP is smaller than the GPU count would otherwise reserve every GPU and
use a few: with `data_parallel_size: auto` vLLM runs one engine per TP x PP group
(`--data-parallel-size`) behind its one API server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_DEVICE = re.compile(r"nvidia\d+")
DEV_DIR = Path("/dev")


def visible_gpus(env: Mapping[str, str], dev_dir: Path = DEV_DIR) -> int:
    """CUDA_VISIBLE_DEVICES when set (what CUDA will show the engine), else the GPU device
    nodes present: a container gets only those of its `device_ids`/`count`."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part for part in visible.split(",") if part.strip()]
        # CUDA stops at the first invalid id; "-1" is the usual way to hide every GPU.
        return next((i for i, part in enumerate(ids) if part.strip().startswith("-")), len(ids))
    try:
        return sum(1 for entry in dev_dir.iterdir() if _DEVICE.fullmatch(entry.name))
    except OSError:
        return 0


@dataclass(frozen=True)
class DataParallel:
    size: int
    note: str  # what the dry run shows; empty when there is nothing to say
    warning: str = ""


def plan(requested: int | str, per_engine: int, gpus: int) -> DataParallel:
    """The data-parallel size for a profile asking `requested` (an int or "auto")."""
    if requested != "auto":
        size = int(requested)
        note = (
            f"{size} engines x {per_engine} GPU(s) = {size * per_engine} GPUs" if size > 1 else ""
        )
        warning = ""
        if gpus and size * per_engine > gpus:
            warning = f"data parallel size {size} needs {size * per_engine} GPUs; {gpus} visible"
        return DataParallel(size, note, warning)
    if gpus == 0:
        return DataParallel(
            1, "", "data_parallel_size auto: no GPU visible (CUDA_VISIBLE_DEVICES, /dev/nvidia*)"
        )
    size = max(1, gpus // per_engine)
    note = f"auto: {size} engine(s) x {per_engine} GPU(s) on {gpus} visible GPU(s)"
    idle = gpus - size * per_engine
    if idle > 0 and gpus >= per_engine:
        note += f", {idle} left idle"
    warning = (
        f"{gpus} GPU(s) visible, fewer than one engine's {per_engine}" if gpus < per_engine else ""
    )
    return DataParallel(size, note, warning)
