"""The quickstart notebook executes top to bottom (tiny pipeline, toy BoN math)."""

import os

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
  out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  # The toy cell's exact-vs-Monte-Carlo assertions ran, and the pipeline's table was printed.
  assert "Monte Carlo max |diff|" in out and "| policy |" in out and "| pass_at_k |" in out
