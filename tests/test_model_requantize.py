"""model_server/requantize.py: the packaged model's Q8_0 copy, made once, found again, and
the launcher's fallback to the packaged file when no copy can be made. The GGUF files here are
real ones, written with gguf-py (the same library the converter reads them with)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from model_server import config, launch, requantize
from model_server.__main__ import build_parser, main
from model_server.profiles import PackageFile, ProfileError, load_file

gguf = pytest.importorskip("gguf", reason="gguf-py is installed by `make embedded`")
Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(7)


def write_gguf(path: Path) -> dict[str, np.ndarray]:
    """A small llama-shaped GGUF: Q4_1 weights, an F32 norm, a Q8_0 embedding; the floats each
    tensor holds (as its format stores them) by name."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny test model")
    writer.add_context_length(256)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_token_list(["<s>", "</s>", "hello", "world"])
    writer.add_token_scores([0.0, 0.0, -1.5, -2.5])
    stored: dict[str, np.ndarray] = {}
    for name, kind, shape in (
        ("blk.0.attn_q.weight", Q.Q4_1, (8, 64)),
        ("blk.0.attn_norm.weight", Q.F32, (64,)),
        ("token_embd.weight", Q.Q8_0, (4, 64)),
    ):
        values = RNG.normal(0, 0.05, shape).astype(np.float32)
        if kind == Q.F32:
            writer.add_tensor(name, values)
            stored[name] = values
            continue
        raw = gguf.quants.quantize(values, kind)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=kind)
        stored[name] = gguf.quants.dequantize(raw, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


@pytest.fixture
def folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """The install's folder (under a fake sys.prefix) and the user's cache, both empty."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    install, cache = requantize.folders()
    assert install == tmp_path / "venv" / "share" / "mixvllm" / "models"
    assert cache == tmp_path / "cache" / "mixvllm" / "models"
    return install, cache


def test_the_copy_holds_q8_0_weights_equal_to_the_q4_1_ones(tmp_path: Path) -> None:
    source = tmp_path / "m.Q4_1.gguf"
    stored = write_gguf(source)
    copy = tmp_path / "m.Q8_0.gguf"
    requantize.convert(source, copy, "Q8_0")

    reader = gguf.GGUFReader(copy)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds == {
        "blk.0.attn_q.weight": Q.Q8_0, "blk.0.attn_norm.weight": Q.F32,
        "token_embd.weight": Q.Q8_0,
    }  # fmt: skip
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        want = stored[tensor.name]
        assert values.shape == want.shape
        # Q8_0: each weight within half a step (its block's largest / 127) of what it was,
        # plus what storing the step as float16 costs (2^-11 of it, up to 127 times).
        step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        error = np.abs(values - want).reshape(-1, 32)
        assert (error <= step * (0.5 + 127 / 2**11)).all(), tensor.name
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.name"].contents() == "tiny test model"
    assert fields["llama.context_length"].contents() == 256
    assert fields["tokenizer.ggml.tokens"].contents() == ["<s>", "</s>", "hello", "world"]
    assert fields["tokenizer.ggml.scores"].contents() == [0.0, 0.0, -1.5, -2.5]
    assert fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_the_copy_is_made_once_in_the_install_and_found_again(
    folders: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install, _ = folders
    source = tmp_path / "m.Q4_1.gguf"
    write_gguf(source)
    assert requantize.cached(source, "Q8_0") is None
    copy = requantize.ensure(source, "Q8_0")
    assert copy.parent == install and copy.name.startswith("m.Q4_1.")
    assert copy.name.endswith(".Q8_0.gguf")
    assert [p.name for p in install.iterdir()] == [copy.name]  # no temporary file left
    assert copy.stat().st_mode & 0o777 == 0o644

    def no_second_conversion(*_: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(requantize, "convert", no_second_conversion)
    assert requantize.ensure(source, "Q8_0") == copy
    assert requantize.cached(source, "Q8_0") == copy
    # Another file (another version of the package) is another copy.
    write_gguf(source)
    assert requantize.cached(source, "Q8_0") is None


def test_a_read_only_install_puts_the_copy_in_the_users_cache(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    install, cache = folders
    install.parent.parent.mkdir(parents=True)
    install.parent.write_text("a file where the folder would go")  # no folder can be made
    source = tmp_path / "m.Q4_1.gguf"
    write_gguf(source)
    copy = requantize.ensure(source, "Q8_0")
    assert copy.parent == cache
    assert requantize.cached(source, "Q8_0") == copy


def test_what_cannot_be_converted_is_one_error(
    folders: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install, _ = folders
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF")
    with pytest.raises(requantize.RequantizeError, match=r"junk\.gguf is not a readable GGUF"):
        requantize.ensure(junk, "Q8_0")
    assert not [p for p in install.iterdir() if p.is_file()]  # nothing half-written stays
    with pytest.raises(requantize.RequantizeError, match="cannot read"):
        requantize.ensure(tmp_path / "missing.gguf", "Q8_0")
    with pytest.raises(requantize.RequantizeError, match="cannot convert to 'Q2_K'"):
        requantize.ensure(junk, "Q2_K")
    source = tmp_path / "m.Q4_1.gguf"
    write_gguf(source)
    monkeypatch.setitem(sys.modules, "gguf", None)  # gguf-py not installed
    with pytest.raises(requantize.RequantizeError, match="gguf package is not installed"):
        requantize.ensure(source, "Q8_0")


def _profile(tmp_path: Path, target: str = "Q8_0") -> Path:
    package = tmp_path / "pkgs" / "tiny_model_pkg"
    package.mkdir(parents=True)
    write_gguf(package / "tiny.Q4_1.gguf")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        "description: test\nengine: llama.cpp\nserved_model_name: tiny\n"
        f"model: {{package: tiny_model_pkg, file: '*.gguf', convert_to: {target}}}\n"
    )
    return profile


def test_a_profile_names_only_a_known_format(tmp_path: Path) -> None:
    profile = load_file(_profile(tmp_path))
    assert profile.model == PackageFile("tiny_model_pkg", "*.gguf", "Q8_0")
    assert str(profile.model) == "tiny_model_pkg:*.gguf as Q8_0"
    with pytest.raises(ProfileError, match="convert_to must be one of Q8_0, got 'Q3_K'"):
        load_file(_profile(tmp_path / "other", "Q3_K"))


def test_the_launcher_serves_the_copy_and_says_when_it_cannot(
    folders: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = _profile(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    source = tmp_path / "pkgs" / "tiny_model_pkg" / "tiny.Q4_1.gguf"
    env = {config.STATE_DIR_ENV: str(tmp_path / "state"), config.API_KEY_ENV: "k"}
    monkeypatch.delenv("MODEL", raising=False)

    # A dry run converts nothing: it names the packaged file and says when the copy comes.
    assert main(["--profile", str(profile), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"--model {source} " in out
    assert "# the model is served from a Q8_0 copy, made on the first start" in err
    assert requantize.cached(source, "Q8_0") is None

    args = build_parser().parse_args(["serve", "--profile", str(profile)])
    command = launch.build_command(config.build(args, env), env=env)
    copy = requantize.cached(source, "Q8_0")
    assert copy is not None and command.argv[command.argv.index("--model") + 1] == str(copy)
    assert command.warnings == ()
    assert "writing a Q8_0 copy of tiny.Q4_1.gguf, once" in capsys.readouterr().err

    # No copy possible (here: no gguf-py): the packaged file, and one line saying why.
    copy.unlink()
    monkeypatch.setitem(sys.modules, "gguf", None)
    command = launch.build_command(config.build(args, env), env=env)
    assert command.argv[command.argv.index("--model") + 1] == str(source)
    assert command.warnings == (
        "serving tiny.Q4_1.gguf as it is: no Q8_0 copy (the gguf package is not installed "
        "(make embedded))",
    )
