"""Check the relative links of the project's Markdown pages, offline: every linked file exists and every
``#anchor`` names a heading of its page by GitHub's anchor rules (tests/test_docs.py runs it).

    python scripts/check_links.py                 # README.md, docs/*.md, data/README.md
    python scripts/check_links.py docs/design.md  # given pages only

Links inside fenced code blocks and inline code are not links and are skipped, and so are absolute URLs
(``https:``, ``mailto:``, ...): only what a reader of the repository can follow without a network.
Prints one line per broken link (``page:line: target: why``) and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
#: The pages checked by default, as globs relative to the repository root.
DEFAULT_PAGES = ("README.md", "docs/*.md", "data/README.md")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_INLINE_LINK = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]+>")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
_LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    fence: Optional[str] = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and _closes(line, fence):
            fence = None
        elif fence is None:
            yield number, line


def _closes(line: str, fence: str) -> bool:
    """A closing fence: the opening's character, at least as many, and nothing else on the line."""
    marks = line.strip()
    return set(marks) == {fence[0]} and len(marks) >= len(fence)


def plain_text(markdown: str) -> str:
    """The text GitHub renders for an inline Markdown snippet: code spans, links and images by their
    text, emphasis markers and HTML tags dropped, entities decoded."""
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), markdown)
    text = _IMAGE_OR_LINK.sub(lambda m: m.group(1), text)
    text = _HTML_TAG.sub("", text).replace("*", "")
    return html.unescape(text).strip()


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, every character but letters, digits, ``-``,
    ``_`` and spaces dropped, each space a hyphen (github-slugger's rule; repeats get -1, -2 by
    :func:`page_anchors`)."""
    kept = (ch for ch in plain_text(heading).lower() if ch.isalnum() or ch in "-_ ")
    return "".join(kept).replace(" ", "-")


def page_anchors(text: str) -> Set[str]:
    """Every anchor a page offers: its headings' slugs (the n-th repeat of a slug gets ``-n``) and the
    ids of explicit ``<a id="...">`` / ``<a name="...">`` tags."""
    occurrences: Dict[str, int] = {}
    anchors: Set[str] = set()
    for _, line in prose_lines(text):
        anchors.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        base = result = github_slug(match.group(2) or "")
        while result in occurrences:
            occurrences[base] += 1
            result = f"{base}-{occurrences[base]}"
        occurrences[result] = 0
        anchors.add(result)
    return anchors


def page_links(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    for number, line in prose_lines(text):
        line = _CODE_SPAN.sub("", line)
        targets = _INLINE_LINK.findall(line) + _REFERENCE_DEF.findall(line)
        for target in targets:
            yield number, target.strip("<>")


def is_external(target: str) -> bool:
    """An absolute URL (``https:``, ``mailto:``, ``//host``): not checked offline."""
    return bool(_SCHEME.match(target))


def link_problem(page: Path, target: str, root: Path, cache: Dict[Path, Set[str]]) -> Optional[str]:
    """Why ``target`` (as written on ``page``) does not resolve, or None when it does or is external."""
    if not target or is_external(target):
        return None
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / unquote(path_part)).resolve() if path_part else page.resolve()
    try:
        dest.relative_to(root.resolve())
    except ValueError:
        return "points outside the repository"
    if not dest.exists():
        return "no such file"
    if not anchor:
        return None
    if dest.suffix.lower() != ".md":
        return None if _LINE_ANCHOR.match(anchor) else f"#{anchor} in a non-Markdown file"
    if dest not in cache:
        cache[dest] = page_anchors(dest.read_text(encoding="utf-8"))
    if unquote(anchor) not in cache[dest]:
        return f"no heading with anchor #{anchor} in {_shown(dest, root)}"
    return None


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def check_pages(pages: Sequence[Path], root: Path = REPO) -> List[str]:
    """One ``page:line: target: why`` line per broken relative link of ``pages``."""
    cache: Dict[Path, Set[str]] = {}
    problems = []
    for page in pages:
        for number, target in page_links(page.read_text(encoding="utf-8")):
            why = link_problem(page, target, root, cache)
            if why:
                problems.append(f"{_shown(page, root)}:{number}: {target}: {why}")
    return problems


def default_pages(root: Path = REPO) -> List[Path]:
    """The pages of :data:`DEFAULT_PAGES` that exist under ``root``, in a stable order."""
    return [path for pattern in DEFAULT_PAGES for path in sorted(root.glob(pattern))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pages", nargs="*", type=Path, help="Markdown files (default: the project's pages)")
    parser.add_argument(
        "--root", type=Path, default=REPO, help="links may not leave this folder (default: the repo)"
    )
    args = parser.parse_args(argv)
    pages = [p.resolve() for p in args.pages] or default_pages(args.root)
    missing = [str(p) for p in pages if not p.is_file()]
    if missing:
        parser.error(f"no such page: {', '.join(missing)}; give existing Markdown files")
    problems = check_pages(pages, root=args.root)
    for line in problems:
        print(line)
    print(f"{len(pages)} pages, {len(problems)} broken links", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
