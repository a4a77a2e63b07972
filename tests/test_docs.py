"""The README and docs/*.md: every relative link resolves, and every config group and option that
``unroll-train --help`` lists is documented."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from conftest import run_cli

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")


def prose(text: str) -> str:
    """The text without its fenced code blocks (their lines left empty, so line numbers hold)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but '-' and '_' removed, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        if match := HEADING.match(line):
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            if count:
                seen.setdefault(f"{base}-{count}", 1)
    return set(seen)


def links(page: Path) -> list[str]:
    """The targets of the page's markdown links, outside code."""
    text = CODE_SPAN.sub("", prose(page.read_text(encoding="utf-8")))
    return LINK.findall(text)


def code_spans() -> list[str]:
    """Every inline code span of the README and docs/*.md."""
    return [span for page in PAGES
            for _, span in CODE_SPAN.findall(prose(page.read_text(encoding="utf-8")))]


def test_every_relative_link_resolves():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"(https?|mailto):", target, re.IGNORECASE):
                continue
            path, _, anchor = target.partition("#")
            where = f"{page.relative_to(ROOT)}: ({target})"
            file = (page.parent / unquote(path)).resolve() if path else page
            if ROOT.resolve() not in (file, *file.parents) or not file.exists():
                broken.append(f"{where}: no such file in the repository")
            elif anchor and not file.is_file():
                broken.append(f"{where}: an anchor into a folder")
            elif anchor and unquote(anchor) not in anchors(file):
                broken.append(f"{where}: no heading with the anchor #{anchor} in {file.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_config_group_and_option_is_documented(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    section = result.stdout.split("== Configuration groups ==", 1)[1].split("\n== ", 1)[0]
    groups = {}
    for line in section.splitlines():
        if match := re.match(r"^([\w/]+): (.+)$", line.strip()):
            group, options = match.groups()
            if group != "schema" and not group.startswith(("schema/", "hydra/")):
                groups[group] = [option.strip() for option in options.split(",")]
    assert {"data", "model", "optim", "trainer", "experiment"} <= set(groups), section

    spans = code_spans()
    chosen: dict[str, set[str]] = {}  # group -> the options named in a `group=option,...` form
    for span in spans:
        for group, values in re.findall(r"(?<![\w./])[+~]*([\w/]+)=([\w,]+)", span):
            chosen.setdefault(group, set()).update(values.split(","))
    plain = set(spans)

    missing = [f"group {group}" for group in groups if group not in plain and group not in chosen]
    missing += [f"{group}={option}" for group, options in groups.items() for option in options
                if option not in plain and option not in chosen.get(group, ())]
    assert not missing, ("listed by unroll-train --help but not in README.md or docs/*.md (as `option` "
                         "or `group=option`): " + ", ".join(missing))
