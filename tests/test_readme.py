"""The README says what the code does: its signatures are the real ones, its examples run.

Signatures: every table row of the form ``| `name(...)` | ... |`` is compared
with ``str(inspect.signature(getattr(cnorm, name)))`` (for a class, that of
its ``__init__`` without ``self``).  Two renderings are normalised: annotations
are left out (the tables show names and defaults), and a NumPy type as a
default, which Python prints as ``<class 'numpy.float32'>``, is written
``np.float32``.  Every public function and class must have a row.

Examples: every fenced ``python`` block runs as it stands, in a fresh
namespace with a temporary directory as the working directory.  A block that
imports torch is skipped when torch is not installed.  A block that is only an
excerpt carries ``<!-- excerpt -->`` on the line just before its opening fence
and is not run.

Links: every relative link of the README and of docs/*.md names a file that exists.
"""

import inspect
import re
from pathlib import Path

import pytest

import cnorm

README = Path(__file__).resolve().parents[1] / "README.md"
EXCERPT = "<!-- excerpt -->"

_ROW = re.compile(r"^\|\s*`([A-Za-z_]\w*)(\([^`]*\))`\s*\|")
_NUMPY_TYPE = re.compile(r"<class 'numpy\.(\w+)'>")
_FENCE = re.compile(r"^```(\S*)\s*$")
_IMPORTS_TORCH = re.compile(r"^\s*(import torch\b|from torch\b)", re.MULTILINE)
_IMPORTS_DASK = re.compile(r"^\s*(import dask\b|import cnorm\.dask\b)", re.MULTILINE)
_DASK_ROW = re.compile(r"^\|\s*`cnorm\.dask\.([A-Za-z_]\w*)(\([^`]*\))`\s*\|")

# public names that are not documented with a signature: the result types (named tuples,
# whose fields the tables or the text give) and the bench command
_NO_ROW = {name for name in cnorm.__all__ if name.endswith(("Output", "Grads"))} | {
    "bench", "Moments"}


def readme_lines():
    return README.read_text(encoding="utf-8").splitlines()


def signature_rows():
    """(line number, name, signature text) of each signature row of the README's tables."""
    return [(n, m.group(1), m.group(2))
            for n, line in enumerate(readme_lines(), 1) if (m := _ROW.match(line))]


def code_blocks():
    """(line number of the opening fence, language, preceding line, source) of each block."""
    lines = readme_lines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"README.md:{start + 1}: code block never closed"
        before = lines[start - 1].strip() if start else ""
        blocks.append((start + 1, lang, before, "\n".join(lines[start + 1:end]) + "\n"))
        i = end + 1
    return blocks


def real_signature(obj):
    """inspect's signature of a function, or of a class's __init__ without self, as the
    README writes it (no annotations, NumPy types as np.NAME)."""
    if inspect.isclass(obj):
        sig = inspect.signature(obj.__init__)
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    else:
        sig = inspect.signature(obj)
    sig = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                  for p in sig.parameters.values()],
                      return_annotation=inspect.Signature.empty)
    return _NUMPY_TYPE.sub(r"np.\1", str(sig))


ROWS = signature_rows()
PYTHON_BLOCKS = [b for b in code_blocks() if b[1] == "python"]


def test_readme_has_signature_rows_and_examples():
    assert len(ROWS) >= 10, f"only {len(ROWS)} signature rows found in README.md"
    assert len(PYTHON_BLOCKS) >= 3, "no python examples found in README.md"


@pytest.mark.parametrize("line, name, documented", ROWS, ids=[f"{r[1]}-L{r[0]}" for r in ROWS])
def test_signature_matches_code(line, name, documented):
    assert name in cnorm.__all__, f"README.md:{line}: {name} is not public in cnorm"
    real = real_signature(getattr(cnorm, name))
    assert documented == real, (f"README.md:{line}: the README gives {name}{documented}, "
                                f"the code is {name}{real}")


DASK_ROWS = [(n, m.group(1), m.group(2))
             for n, line in enumerate(readme_lines(), 1) if (m := _DASK_ROW.match(line))]


def test_cnorm_dask_signatures_match_code():
    cd = pytest.importorskip("cnorm.dask")
    assert sorted(name for _, name, _ in DASK_ROWS) == sorted(cd.__all__), \
        "README.md's cnorm.dask table must have one row for each public name of cnorm.dask"
    for line, name, documented in DASK_ROWS:
        real = real_signature(getattr(cd, name))
        assert documented == real, (f"README.md:{line}: the README gives cnorm.dask.{name}"
                                    f"{documented}, the code is {real}")


def test_every_public_callable_has_a_row():
    documented = {name for _, name, _ in ROWS}
    missing = [name for name in cnorm.__all__ if name not in _NO_ROW and name not in documented]
    assert not missing, f"no signature row in README.md for {missing}"


def test_code_blocks_have_a_known_language():
    # a block fenced ```py or ```Python would silently escape test_python_block_runs
    for line, lang, _, _ in code_blocks():
        assert lang in ("python", "bash", "text"), \
            f"README.md:{line}: code block fenced as {lang!r}: use python, bash or text"


@pytest.mark.parametrize("line, lang, before, source", PYTHON_BLOCKS,
                         ids=[f"L{b[0]}" for b in PYTHON_BLOCKS])
def test_python_block_runs(line, lang, before, source, tmp_path, monkeypatch):
    if before == EXCERPT:
        pytest.skip(f"README.md:{line} is marked as an excerpt")
    if _IMPORTS_TORCH.search(source):
        pytest.importorskip("torch")
    if _IMPORTS_DASK.search(source):
        pytest.importorskip("dask.array")
    monkeypatch.chdir(tmp_path)
    # padded so that a traceback's line numbers are the README's
    code = compile("\n" * line + source, str(README), "exec")
    exec(code, {"__name__": "__readme__"})


@pytest.mark.parametrize("page", [README, *sorted((README.parent / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (page.parent / target.split("#")[0]).exists(), \
            f"{page.name} links to {target}, which does not exist"
