"""The documentation: no broken relative link or anchor (scripts/check_links.py), every page reachable from
the front page, the CI test command where .ci/run reads it, and the front page's API example runs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_links", REPO / "scripts" / "check_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


links = _load_checker()


def test_project_pages_have_no_broken_links():
    pages = links.default_pages()
    names = {str(p.relative_to(REPO)) for p in pages}
    assert {"README.md", "docs/README.md", "docs/design.md", "data/README.md"} <= names
    assert links.check_pages(pages) == []


def test_every_page_is_reachable_from_the_front_page():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for _, target in links.page_links(page.read_text(encoding="utf-8")):
            path = target.partition("#")[0]
            if path.endswith(".md") and not links.is_external(path):
                todo.append((page.parent / path).resolve())
    unreachable = [str(p.relative_to(REPO)) for p in links.default_pages() if p.resolve() not in seen]
    assert unreachable == []


def test_front_page_is_short_and_keeps_the_ci_test_command():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
    # Extract the command exactly as .ci/run does, with its own awk program.
    ci_line = next(
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("cmd=")
    )
    awk = re.fullmatch(r"cmd=\$\((.*)\)", ci_line).group(1)
    command = subprocess.run(["bash", "-c", awk], cwd=REPO, capture_output=True, text=True, check=True).stdout
    install = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert command.strip() == install + " && pytest -q -n 2 --dist loadfile"


def test_front_page_api_example_runs_and_prints_what_its_comments_say():
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    expected = re.findall(r"^\s*print\(.*\)\s+# (.*)$", code, re.M)
    assert len(expected) >= 2
    # offline and small: random weights instead of the download, tiny images
    code = code.replace("pretrained=True", "pretrained=False").replace("8, 3, 224, 224", "8, 3, 32, 32")
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs; OpenMP threads spin-waiting on shared cores are far slower
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    assert out.getvalue().splitlines() == expected


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("At the paper's sizes (Appendix E)", "at-the-papers-sizes-appendix-e"),
        ("Fine-tuning: `examples/finetune.py`", "fine-tuning-examplesfinetunepy"),
        ("Naming convention of Conv + BN + ReLU", "naming-convention-of-conv--bn--relu"),
        ("Model zoo: `tllib_tune.models`", "model-zoo-tllib_tunemodels"),
        ("**Bold** and [a link](x.md) 1.5", "bold-and-a-link-15"),
    ],
)
def test_github_slug(heading, anchor):
    assert links.github_slug(heading) == anchor


def test_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text('# Other page\n\n## Usage\n\n## Usage\n<a id="custom"></a>\n')
    (tmp_path / "image.png").write_bytes(b"")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n"
        "[ok](docs/other.md) [ok](docs/other.md#usage-1) [ok](docs/other.md#custom) [ok](#top)\n"
        "![ok](image.png) [ok](https://example.com/missing.md) [ok](mailto:a@b.c)\n"
        "[missing file](docs/nope.md)\n"
        "[bad anchor](docs/other.md#usage-2) [bad own anchor](#nowhere)\n"
        "`[in code](gone.md)`\n"
        "```\n[in a fence](gone.md)\n```python\n[still in it](gone.md)\n```\n"
        "[outside](../elsewhere.md)\n"
        "[ref]: docs/absent.md\n"
    )
    problems = links.check_pages([page], root=tmp_path)
    assert problems == [
        "README.md:4: docs/nope.md: no such file",
        "README.md:5: docs/other.md#usage-2: no heading with anchor #usage-2 in docs/other.md",
        "README.md:5: #nowhere: no heading with anchor #nowhere in README.md",
        "README.md:12: ../elsewhere.md: points outside the repository",
        "README.md:13: docs/absent.md: no such file",
    ]


def test_checker_command_line_exits_nonzero_on_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[x](missing.md)\n")
    script = REPO / "scripts" / "check_links.py"
    result = subprocess.run(
        [sys.executable, str(script), "--root", str(tmp_path), str(page)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stdout == "page.md:1: missing.md: no such file\n"
    page.write_text("[x](page.md)\n")
    result = subprocess.run(
        [sys.executable, str(script), "--root", str(tmp_path), str(page)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == ""
