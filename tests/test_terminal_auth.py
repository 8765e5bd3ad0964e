"""auth.py: one guard, one refusal and one link-to-cookie swap for every route, and a module
graph without circles."""

from __future__ import annotations

import ast
from pathlib import Path

from .terminal_support import ROOT, TOKEN, run, running_server

PACKAGE = ROOT / "terminal_server"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, TYPE_CHECKING-only imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            found.update(n for n in names if n in modules)
    return found


def test_the_servers_modules_import_each_other_without_a_circle() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {m: _imports(PACKAGE / f"{m}.py", modules) for m in modules}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            assert dep not in path, f"import circle: {' -> '.join([*path, dep])}"
            if dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(modules):
        visit(module, [module])


def test_one_reason_reads_the_same_on_every_route() -> None:
    async def body() -> None:
        async with running_server() as srv:
            evil = {"Host": "evil.example"}
            hosts = {
                (await srv.fetch(path, evil, **kw)).body
                for path, kw in (
                    ("", {}),
                    ("healthz", {}),
                    ("view/", {}),
                    ("view/static/terminal.js", {}),
                    ("api/share?session=x", {"method": "POST", "body": b""}),
                )
            }
            tokens = {
                (await srv.fetch(path)).body
                for path in ("", "?token=wrong-wrong-wrong", "healthz", "api/chat?session=x")
            }
            shares = {
                (await srv.fetch(path)).body for path in ("view/", "view/?share=nope-nope-nope")
            }
            foreign = {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}
            origins = {
                (await srv.fetch("ws", foreign)).body,
                (await srv.fetch("api/share?session=x", foreign, method="POST", body=b"")).body,
            }
            refusals = (hosts, tokens, shares, origins)
            assert [len(texts) for texts in refusals] == [1, 1, 1, 1], refusals
            assert TOKEN.encode() not in b"".join(hosts | tokens | shares | origins)

    run(body)
