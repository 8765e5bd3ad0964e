"""chat_cli's layout: sub-packages by topic whose imports run one way, modules of one size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chat_cli"
MAX_LINES = 420
# What each sub-package may import from chat_cli: api talks to the server and knows nothing
# of screens or tools; render shows answers; tools run calls. The top level uses them all.
ALLOWED = {
    "api": {"api", "errors"},
    "render": {"render", "api", "conversation", "errors"},
    "tools": {"tools", "api", "conversation", "errors"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The chat_cli modules `path` imports, lazily inside a function or not."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("chat_cli"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chat_cli"):
            assert node.module is not None
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                sub = PACKAGE.joinpath(*candidate.split(".")[1:])
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_itself_round_a_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges.get(name, ())):
            assert state.get(target) != 1, " -> ".join([*path, name, target])
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [])


def test_sub_packages_import_one_way() -> None:
    for name, targets in graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue
        for target in targets:
            topic = target.split(".")[1] if "." in target else target
            assert topic in ALLOWED[parts[1]], f"{name} imports {target}"


PACKAGES = ["chat_cli", "terminal_server", "model_server", "mixvllm_common"]


def test_no_module_of_any_package_over_the_size_limit() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
    }
    assert len(sizes) > 60  # every package was read
    assert max(sizes.values()) <= MAX_LINES, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_the_top_level_holds_no_module_of_a_sub_package() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    for sub in ALLOWED:
        assert not top & {p.stem for p in (PACKAGE / sub).glob("*.py")} - {"__init__"}


def test_help_reads_the_flags_and_imports_nothing_else() -> None:
    """`chat --help` (and a bad flag) stop at the configuration: no client, renderer or REPL."""
    probe = (
        "import sys; from chat_cli.__main__ import main\n"
        "try: main(['--help'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('chat_cli.', 'rich', 'prompt_t'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "usage: chat" in done.stdout
    loaded = set(ast.literal_eval(done.stdout.splitlines()[-1]))
    assert loaded <= {
        "chat_cli.__main__",
        "chat_cli.config",
        "chat_cli.errors",
        "chat_cli.chats",
        "chat_cli.conversation",
        "chat_cli.tools",
        "chat_cli.tools.mcp_config",
    }, loaded
