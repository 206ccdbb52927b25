"""The library API (docs/api.md): ``import jaxbigram`` loads submodules on first use, and the page's example runs."""

import re
import subprocess
import sys

from conftest import REPO_ROOT


def test_import_is_lazy_and_every_documented_submodule_loads():
    code = ("import sys, jaxbigram as jb; assert 'jax' not in sys.modules and 'jaxbigram.train' not in sys.modules; "
            "jb.data; assert 'jaxbigram.data' in sys.modules and 'jaxbigram.train' not in sys.modules; "
            "[getattr(jb, name) for name in ('config', 'models', 'train', 'evaluate', 'sampling', 'optimum')]; "
            "print(sorted(n for n in jb.SUBMODULES if 'jaxbigram.' + n in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import jaxbigram

    for name in jaxbigram.SUBMODULES:
        assert getattr(jaxbigram, name).__name__ == f"jaxbigram.{name}"


def test_the_documented_example_trains_and_samples(capfd):
    page = (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    exec(compile(example, "docs/api.md", "exec"), {})
    loss, estimate, exact_val, optimum_val = map(float, capfd.readouterr().out.splitlines()[0].split())
    assert 3.5 < loss < 6  # one step from a random N(0, 1) table: about the lecture's 4.7
    assert exact_val < loss and abs(estimate - exact_val) < 0.2  # 151 steps learned something, the estimate agrees
    assert optimum_val < exact_val
