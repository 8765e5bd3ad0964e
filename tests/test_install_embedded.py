"""scripts/install-embedded.sh: the CMake flags that shrink the llama.cpp build, and the
progress a newcomer sees while it compiles."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-embedded.sh"
PROGRESS = ROOT / "scripts" / "build_progress.py"

# The shape of llama-cpp-python 0.3.36's CMakeLists.txt: it forces llama.cpp's common library
# on, has an LLAVA_BUILD option for mtmd, and adds llama.cpp (project "llama.cpp") below it.
PARENT = """\
cmake_minimum_required(VERSION 3.21)
project(llama_cpp NONE)
option(LLAVA_BUILD "Build llava shared library" ON)
set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)
add_subdirectory(vendor/llama.cpp)
message(STATUS "LLAVA_BUILD=${LLAVA_BUILD}")
"""
LLAMA_CPP = """\
project("llama.cpp" NONE)
option(LLAMA_BUILD_COMMON "llama: build common utils library" OFF)
message(STATUS "LLAMA_BUILD_COMMON=${LLAMA_BUILD_COMMON}")
"""


def configure(tmp_path: Path, args: list[str]) -> str:
    src = tmp_path / "src"
    (src / "vendor" / "llama.cpp").mkdir(parents=True, exist_ok=True)
    (src / "CMakeLists.txt").write_text(PARENT)
    (src / "vendor" / "llama.cpp" / "CMakeLists.txt").write_text(LLAMA_CPP)
    build = tmp_path / f"build{len(args)}"
    done = subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), *args],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def test_cmake_args_turn_off_the_libraries_the_server_never_loads(tmp_path: Path) -> None:
    require(shutil.which("cmake") is not None, "cmake is not installed")
    printed = subprocess.run(
        ["bash", str(SCRIPT), "--cmake-args"], capture_output=True, text=True, check=True
    ).stdout
    args = shlex.split(printed)
    hook = [a.split("=", 1)[1] for a in args if a.startswith("-DCMAKE_PROJECT_llama.cpp_INCLUDE=")]
    assert hook and Path(hook[0]).is_file(), printed

    default = configure(tmp_path, [])
    assert "LLAMA_BUILD_COMMON=ON" in default and "LLAVA_BUILD=ON" in default

    slim = configure(tmp_path, args)
    assert "LLAMA_BUILD_COMMON=OFF" in slim, slim
    assert "LLAVA_BUILD=OFF" in slim, slim


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
