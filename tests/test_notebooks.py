"""The quickstart notebook executes top to bottom (tiny pipeline, toy BoN math)."""

import os

import jax
import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs_and_its_checks_pass(tmp_path, monkeypatch):
  monkeypatch.delenv("BON_WORKDIR", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "bon_quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = lambda cell: "".join(o.get("text", "") for o in cell.get("outputs", []))
  out = "".join(text(c) for c in code)
  # Colab-ready: the first cell installs bon_jax only where it is missing (here it is
  # installed, so it does nothing), the next names the accelerator it found.
  assert "pip" in code[0].source and text(code[0]).startswith("bon_jax 0.1.0 is installed; nothing to install")
  assert "JAX " + jax.__version__ + " on no accelerator (CPU only)" in text(code[1])
  assert "colab.research.google.com/github/" in nb.cells[0].source
  # The toy cell's exact-vs-Monte-Carlo assertions ran, and the pipeline's table was printed.
  assert "Monte Carlo max |diff|" in out and "| policy |" in out and "| pass_at_k |" in out
