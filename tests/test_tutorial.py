"""tutorial.ipynb runs top to bottom without an error, and is committed with the figures it draws."""
import os
import time

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

PATH = os.path.join(ROOT, 'tutorial.ipynb')
COMMAND = 'jupyter execute --inplace tutorial.ipynb'


def figures(nb):
    return [i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and any('image/png' in o.get('data', {}) for o in c.outputs)]


def test_the_committed_notebook_shows_its_figures_and_how_to_regenerate_them():
    nb = nbformat.read(PATH, as_version=4)
    nbformat.validate(nb)
    assert COMMAND in nb.cells[0].source and COMMAND in open(os.path.join(ROOT, 'README.md')).read()
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert all(c.execution_count == i + 1 for i, c in enumerate(code))     # run once, top to bottom, in order
    assert len(figures(nb)) >= 5 and not any(o.output_type == 'error' for c in code for o in c.outputs)


def test_the_notebook_runs_top_to_bottom(tmp_path):
    """Executed afresh in a kernel whose working folder is the repo (it writes only to temporary folders), it raises
    no error and draws the same figures as the committed one."""
    nb = nbformat.read(PATH, as_version=4)
    committed = figures(nb)
    t = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': ROOT}}).execute()
    print(f'tutorial.ipynb ran in {time.perf_counter() - t:.0f} s')
    assert figures(nb) == committed
