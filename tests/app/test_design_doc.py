"""docs/design.md is the repository's own reference: every ``docs/design.md#<anchor>`` cited in
the code and docs names a heading that exists, and nothing points outside the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "design.md"
SKIP = {".venv", ".git", "build", "node_modules"}


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _files():
    for path in ROOT.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".md", ".toml", ".sh"}:
            if not SKIP & set(path.relative_to(ROOT).parts):
                yield path


def test_every_cited_anchor_exists():
    anchors = {_slug(m) for m in re.findall(r"^#+ (.+)$", DOC.read_text(), flags=re.M)}
    missing = []
    for path in _files():
        for anchor in re.findall(r"design\.md#([\w-]+)", path.read_text()):
            if anchor not in anchors:
                missing.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert missing == []


def test_nothing_points_outside_the_repository():
    pattern = re.compile("SP" + "EC|" + "shared" + "/")  # spelled so this file does not match
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_design_doc_covers_the_contract():
    text = DOC.read_text()
    for heading in (
        "## Model math",
        "## State dict",
        "## Choices the paper leaves open",
        "## Kernels",
        "### Band attention",
        "### F-Encoder kernels",
        "### Kernel resources",
        "### Dispatch",
        "## ONNX export",
        "## Benchmarks",
    ):
        assert f"\n{heading}\n" in text, heading


PATH_PATTERN = re.compile(
    r"(?<![\w/.-])((?:atfnn_fast|kernels|export|benchmarks|scripts|tests|docs)/[\w./-]*[\w/])"
)


def named_paths(text: str) -> set[str]:
    """Repository paths a document names (``kernels/dispatch.py``, ``export/``): patterns with
    placeholders (``sm_XX``, a date left open) are not paths."""
    found = set()
    for match in PATH_PATTERN.findall(text):
        path = match.rstrip(".")
        if re.search(r"XX|\d{8}\.|-$|_$", path):
            continue
        if "." in Path(path).name or path.endswith("/"):
            found.add(path)
    return found


def test_the_readme_and_the_docs_name_only_paths_that_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    missing = [
        f"{doc.relative_to(ROOT)}: {path}"
        for doc in docs
        for path in sorted(named_paths(doc.read_text()))
        if not (ROOT / path.split("#")[0]).exists()
    ]
    assert missing == []


def test_the_path_check_sees_a_missing_file():
    assert named_paths("see `kernels/triton_band_attention.py` and kernels/tuned/sm_XX.json") == {
        "kernels/triton_band_attention.py"
    }
