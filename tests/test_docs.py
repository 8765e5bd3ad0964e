"""The docs hold what the code does: the configuration tables are the ones the programs' option
tables render and name every flag and environment variable of the real parsers, the quick start
is the two make targets CI runs, and every link in the README and docs/ leads somewhere. Each
claim is read from the page that holds it, by its heading."""

from __future__ import annotations

import argparse
import re
import runpy
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from chat_cli.config import build_parser as chat_parser
from model_server.__main__ import build_parser as serve_parser
from terminal_server.config import build_parser as terminal_parser
from tests.docs_support import DOCS, ROOT, anchors, code_blocks, headings, pages, section, slug

CONFIGURATION = DOCS / "configuration.md"
README = ROOT / "README.md"
ENV_IN_HELP = re.compile(r"\$([A-Z][A-Z0-9_]+)")
# Markdown links and images; inline code is blanked first, so `["x", (y)]` is no link.
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def _documented(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for sub in _all_parsers(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--version"):
                    yield sub.prog, flag
            for env in ENV_IN_HELP.findall(action.help or ""):
                yield sub.prog, env


PARSERS = {
    "mixvllm-terminal": terminal_parser(),
    "chat": chat_parser(),
    "mixvllm-serve": serve_parser(),
}
# Each (sub)command's options are documented under its own heading of docs/configuration.md.
SECTIONS = {
    "mixvllm-terminal": "`mixvllm-terminal` (terminal server)",
    "chat": "`chat`",
    "mixvllm-serve serve": "`mixvllm-serve` (model server launcher)",
    "mixvllm-serve up": "`mixvllm-serve up`",
    "mixvllm-serve wait": "`mixvllm-serve wait`, `health` and `key`",
    "mixvllm-serve health": "`mixvllm-serve wait`, `health` and `key`",
}


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_every_flag_and_env_var_is_under_its_programs_heading(program: str) -> None:
    missing = []
    for prog, name in sorted(set(_documented(PARSERS[program]))):
        assert prog in SECTIONS, f"{prog} has options but no section in docs/configuration.md"
        text = section(CONFIGURATION, SECTIONS[prog])
        if f"`{name}`" not in text and f"`${name}" not in text:
            missing.append(f"{prog}: {name}")
    assert missing == [], "docs/configuration.md lacks: " + ", ".join(missing)


def test_configuration_tables_are_the_rendered_option_tables() -> None:
    tables = runpy.run_path(str(ROOT / "scripts" / "config_tables.py"))
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert text.count("<!-- options: ") == len(tables["TABLES"])
    assert tables["render"](text) == text, (
        "docs/configuration.md's tables are stale: run `python scripts/config_tables.py`"
    )


def test_the_quick_start_is_the_two_make_targets_ci_runs() -> None:
    (commands, *_) = code_blocks(section(README, "Quick start"), "bash")
    typed = [line.split("#", 1)[0].strip() for line in commands.splitlines()]
    assert typed == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec make test$", ci, re.M), ci


def _links(path: Path) -> Iterator[str]:
    """The targets of the page's links, code blocks and inline code left out."""
    text = re.sub(r"^\s*```.*?^\s*```", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "``", text)
    for match in LINK.finditer(text):
        yield match.group(1)


def _broken(page: Path, link: str) -> str | None:
    """Why `link` on `page` leads nowhere, or None when it resolves in this checkout."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:: not checked offline
        return None
    target, _, fragment = link.partition("#")
    path = (page.parent / unquote(target)).resolve() if target else page
    if not path.is_relative_to(ROOT):
        return f"{link}: outside the repository"
    if not path.exists():
        return f"{link}: no file {path.relative_to(ROOT)}"
    if fragment:
        if path.suffix != ".md":
            return f"{link}: an anchor into a file that is not markdown"
        if fragment not in anchors(path.read_text()):
            return f"{link}: {path.relative_to(ROOT)} has no heading for #{fragment}"
    return None


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [why for link in _links(page) if (why := _broken(page, link))]
    assert broken == [], f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_a_broken_file_or_heading(tmp_path: Path) -> None:
    # The checker itself, on the repository's real pages: a heading that exists passes.
    page = DOCS / "README.md"
    assert _broken(page, "chat.md#tools") is None
    assert _broken(page, "chat.md#no-such-heading") is not None
    assert _broken(page, "no-such-page.md") is not None
    assert _broken(page, "../../outside.md") is not None


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / unquote(link.partition("#")[0])).resolve() for link in _links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], f"README.md does not link docs/{unlinked}"


def test_the_index_links_every_section_of_the_manual() -> None:
    """docs/README.md reaches every page and every `##` section of it in one click."""
    index = DOCS / "README.md"
    linked = set()
    for link in _links(index):
        target, _, fragment = link.partition("#")
        linked.add((Path(target).name, fragment))
    missing = []
    for page in sorted(DOCS.glob("*.md")):
        if page == index:
            continue
        if (page.name, "") not in linked:
            missing.append(page.name)
        for level, title in headings(page.read_text()):
            if level == 2 and (page.name, slug(title)) not in linked:
                missing.append(f"{page.name}#{slug(title)}")
    assert missing == [], "docs/README.md does not link " + ", ".join(missing)


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the detail to docs/"


def _mentions() -> Iterator[tuple[str, str]]:
    """(file, `docs/page.md#anchor`) for every docs page a message, comment or recipe names."""
    patterns = ["*/*.py", "*/*/*.py", "model_server/profiles/*.yaml", "deploy/**/*", "Makefile",
                ".env.example", "Dockerfile.*", "docker-compose*.yml", ".ci/run"]  # fmt: skip
    for pattern in patterns:
        for path in sorted(ROOT.glob(pattern)):
            if "node_modules" in path.parts or path.name == "test_docs.py" or path.is_dir():
                continue
            for found in re.findall(r"\bdocs/[\w.-]+\.md(?:#[\w-]+)?", path.read_text()):
                yield str(path.relative_to(ROOT)), found


def test_every_docs_page_the_code_names_exists() -> None:
    mentions = list(_mentions())
    assert ("chat_cli/commands.py", "docs/chat.md#tools") in mentions
    broken = [f"{where}: {why}" for where, link in mentions
              if (why := _broken(README, link))]  # fmt: skip
    assert broken == [], "; ".join(broken)


PACKAGES = ["terminal_server", "chat_cli", "model_server", "mixvllm_common"]


@pytest.mark.parametrize("package", PACKAGES)
def test_the_code_layout_names_every_module_and_only_those(package: str) -> None:
    layout = section(DOCS / "architecture.md", "Code layout")
    bullet = re.search(rf"^- `{package}/`:(.*?)(?=^- |\Z)", layout, re.M | re.S)
    assert bullet, f"docs/architecture.md's code layout has no bullet for {package}/"
    named = set(re.findall(r"`([\w/]+\.py)`", bullet.group(1)))
    modules = {str(p.relative_to(ROOT / package)) for p in (ROOT / package).rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}  # fmt: skip
    assert (sorted(modules - named), sorted(named - modules)) == ([], []), (
        f"docs/architecture.md, {package}/: (not listed, listed but gone)"
    )
