"""Every Python example in the README runs as written, each in an empty folder of its own."""

import pathlib
import re

import pytest

import fusednet as fn

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

#: sections whose example takes more than a few seconds (scikit-learn's cross-validation and grid search)
SLOW = ("scikit-learn-estimators",)


def _slug(heading):
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def readme_examples(text):
    """``[(section slug, code), ...]``: the ```python blocks, named after the section they are in."""
    blocks, section, code = [], "top", None
    for line in text.splitlines(keepends=True):
        if code is not None:
            if line.startswith("```"):
                blocks.append((section, "".join(code)))
                code = None
            else:
                code.append(line)
        elif line.startswith("## "):
            section = _slug(line[3:])
        elif line.strip() == "```python":
            code = []
    assert code is None, "a ```python block of the README is not closed"
    names = [s for s, _ in blocks]
    return [(s if names.count(s) == 1 else f"{s}-{names[:k + 1].count(s)}", c) for k, (s, c) in enumerate(blocks)]


EXAMPLES = readme_examples(README.read_text(encoding="utf-8"))


def _params():
    return [pytest.param(code, id=name, marks=[pytest.mark.slow] if name.startswith(SLOW) else [])
            for name, code in EXAMPLES]


def test_the_readme_has_examples():
    names = [name for name, _ in EXAMPLES]
    for section in ("quickstart", "keras-style-fit", "scikit-learn-estimators", "the-manual-loop",
                    "saving-loading-and-onnx"):
        assert section in names, f"the README has no Python example under {section!r}"


@pytest.fixture
def restore_globals():
    backend, threads = fn.get_backend(), fn.get_num_threads()
    yield
    fn.set_backend(backend)
    fn.set_num_threads(threads)


@pytest.mark.parametrize("code", _params())
def test_readme_example_runs(code, tmp_path, monkeypatch, restore_globals):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102 (the README's own examples)
