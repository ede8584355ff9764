"""The package's shape (docs/architecture.md): no import cycle inside mmc2f/, no module over 500
lines, models never import converters or the layers above them."""
import ast
import os
import os.path as osp

import pytest

PKG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'mmc2f')


def _modules():
    mods = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith('.py'):
                path = osp.join(root, f)
                name = osp.relpath(path, osp.dirname(PKG))[:-3].replace(os.sep, '.')
                mods[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return mods


def _imports(name, path, mods):
    """mmc2f modules ``name`` imports, at module level or inside functions."""
    pkg = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split('.')
                base = '.'.join(parts[:len(parts) - node.level + 1] +
                                ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [base] + [f'{base}.{a.name}' for a in node.names]
        found |= {t for t in targets if t in mods and t != name}
    return found


@pytest.fixture(scope='module')
def graph():
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_import_cycle(graph):
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_layers_import_only_downwards(graph):
    below = {'mmc2f.ops': ('mmc2f.models', 'mmc2f.checkpoint', 'mmc2f.engine', 'mmc2f.apis'),
             'mmc2f.checkpoint': ('mmc2f.models', 'mmc2f.engine', 'mmc2f.apis'),
             'mmc2f.models': ('mmc2f.engine', 'mmc2f.apis', 'mmc2f.cli')}
    for name, deps in graph.items():
        for layer, forbidden in below.items():
            if name == layer or name.startswith(layer + '.'):
                bad = [d for d in deps if d.startswith(forbidden)]
                assert not bad, f'{name} imports {bad}'


def test_no_module_over_500_lines():
    sizes = {name: sum(1 for _ in open(path)) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > 500} == {}
