"""The README's promises that CI and the docs depend on: its test command is the one CI runs,
and every page it links to exists."""

from __future__ import annotations

import re

from serving import REPO

README = (REPO / "README.md").read_text()


def readme_commands() -> list[str]:
    """The two opening commands: the first ``bash`` block's lines, comments stripped."""
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block, "README.md has no bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    serve, test = readme_commands()[:2]
    assert serve.endswith("stlight serve") and "pytest" in test
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci, f"{test!r} is not a line of .ci/run"


def test_readme_links_resolve() -> None:
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", README)
    assert "docs/development.md" in targets
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, missing


def test_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 250
