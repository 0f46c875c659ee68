"""Every Python snippet of README.md runs (in a scratch directory), so none can rot.

A snippet whose first line is "# requires: <module>" is skipped when that
module is not installed.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 10


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    code = SNIPPETS[index]
    requires = re.match(r"# requires: (\S+)", code)
    if requires:
        pytest.importorskip(requires.group(1))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md snippet {index}", "exec"), {"__name__": "__readme__"})
