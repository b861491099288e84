"""The layout: one concern a file, each opening with a docstring, and imports that only go down."""
import ast
import os

from conftest import ROOT

# each module and the repo modules it may import: train.py on top, the objective, data and model at the bottom
LAYERS = {
    'util': set(), 'data': set(), 'model': set(), 'optim': set(), 'evaluate': set(), 'files': set(),
    'seeds': set(), 'cli': {'files'}, 'flow': {'optim'}, 'noise': {'flow'}, 'plot': {'evaluate', 'files', 'data'}, 'memory': {'noise', 'evaluate', 'flow'},
    'resume': {'cli', 'files', 'seeds', 'model', 'noise', 'flow', 'optim', 'methods'},
    'likelihood': {'evaluate'}, 'score': set(), 'tables': {'files', 'data'}, 'baselines': set(), 'cluster': set(), 'methods': {'cli', 'util', 'likelihood', 'score', 'optim'},
    'train': {'cli', 'data', 'model', 'noise', 'flow', 'optim', 'evaluate', 'files', 'plot', 'seeds', 'memory', 'resume', 'methods'},
    'sweep': {'files'},
    'logz': {'cli', 'files', 'resume', 'seeds', 'data', 'model', 'noise', 'evaluate', 'methods', 'cluster', 'sweep', 'tables', 'plot'},
}


def repo_imports(path):
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split('.')[0])
    return tree, names


def test_each_module_has_a_docstring_and_imports_only_below_itself():
    modules = {f[:-3] for f in os.listdir(ROOT) if f.endswith('.py')} - {'bench', 'results', 'tune'}
    assert modules == set(LAYERS), modules
    for name, allowed in LAYERS.items():
        tree, names = repo_imports(os.path.join(ROOT, name + '.py'))
        doc = ast.get_docstring(tree)
        assert doc and len(doc.splitlines()[0]) > 10, name
        assert names & set(LAYERS) <= allowed, (name, names & set(LAYERS))
