"""docs/walkthrough.ipynb runs top to bottom: executed fresh with nbclient in a kernel of this interpreter (JAX on the
CPU, the session's tinyshakespeare), every cell without an error."""

import json
import os
import sys

import nbformat
from nbclient import NotebookClient

from conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "docs" / "walkthrough.ipynb"
KERNEL = "jaxbigram-test"


def test_the_walkthrough_runs_top_to_bottom(data_path, _session_cache, tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL  # a kernel of this interpreter, found through JUPYTER_PATH
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "this interpreter", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JAXBIGRAM_DATA", str(data_path))  # the kernel inherits this environment
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XDG_CACHE_HOME", str(_session_cache))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    gpt_loop = [c for c in notebook.cells if c.cell_type == "code" and "for chunk in range(10):" in c.source]
    assert len(gpt_loop) == 1  # the tiny GPT's training: the suite runs 2 of its 10 chunks (the stored outputs: all)
    gpt_loop[0].source = gpt_loop[0].source.replace("for chunk in range(10):", "for chunk in range(2):")
    seeds_cell = [c for c in notebook.cells if c.cell_type == "code" and '"train.steps=1000"' in c.source]
    assert len(seeds_cell) == 1  # the vmap over 8 seeds: the suite runs 200 steps each (the stored outputs: 1000)
    seeds_cell[0].source = seeds_cell[0].source.replace('"train.steps=1000"', '"train.steps=200"')
    NotebookClient(notebook, timeout=300, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on a failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    assert "step 500: train est." in "".join(o.get("text", "") for o in gpt_loop[0].outputs)
    printed = "".join(o.get("text", "") for o in outputs)
    assert "loop == matrix: True | matrix == softmax: True" in printed and "rows sum to 1: True" in printed
    assert "nothing above the diagonal: True" in printed and "logits changed at positions [31]" in printed
    assert "8 seeds x 200 steps in" in printed and "losses (8, 200)" in printed  # vmap over seeds, one program
    assert "lower: True" in printed  # the first step (the lecture preset's constant rate) lowers the loss
    assert "one-hot == integer labels: True" in printed and "all 65 kept (none zero): True" in printed
    assert "the same batches, the same table: True" in printed  # the lecture's Python loop == the fused loop
    assert ("idx (2, 3) -> logits (2, 3, 65) -> logits[:, -1, :] (2, 65) -> probs (2, 65) -> idx_next (2, 1) -> "
            "idx (2, 4)") in printed and "after 3 new tokens: (2, 4)" in printed  # the generate walk, with shapes
