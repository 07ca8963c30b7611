"""The package layout: imports point downwards only (docs/contracts.md,
"Layers"), and every test file is named after what it tests."""

import ast
import pathlib

import pytest

from tests.helpers import inputs

ROOT = pathlib.Path(inputs.REPO)
PACKAGE = ROOT / "performer_jax"

# Lowest first. A module may import its own package and any package of a
# lower layer; packages that share a layer never import each other.
LAYERS = (
    ("allocator", "compile_cache", "kernels"),  # the platform
    ("attention",),                             # pure attention math
    ("schemas",),                               # config sections
    ("core",),                                  # what Linen and NNX share
    ("linen", "nnx", "data"),
    ("lipschitz", "tasks"),
    ("experiment",),                            # config -> model and task
    ("configs",),                               # the shipped config files
    ("train",),
    ("inference",),
    ("convert",),
    ("__init__",),                              # the package's front door
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# Test files named after something other than a module.
SUBJECTS = {"readme": "README.md", "packaging": "pyproject.toml",
            "layout": "this file's rules"}
# Test folders and the source folder each mirrors.
MIRRORS = {"experiments": ROOT / "experiments", "scripts": ROOT / "scripts",
           "helpers": ROOT / "tests" / "helpers"}


def _sources():
  """(unit, path) of every module: its top-level package or module name."""
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    yield parts[0] if len(parts) > 1 or parts[0] != "__init__" else (
        "__init__"), path
  for path in sorted((ROOT / "configs").glob("*.py")):
    yield "configs", path


def _imported_units(path: pathlib.Path) -> set[str]:
  """The units (top-level packages of performer_jax) that `path` imports,
  at module level or inside functions."""
  units = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:
      module = node.module or ""
      names = ([f"{module}.{a.name}" for a in node.names]
               if module == "performer_jax" else [module])
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "performer_jax" and len(parts) > 1:
        units.add(parts[1])
  return units


def test_every_unit_has_a_layer():
  units = {unit for unit, _ in _sources()}
  assert units <= set(LAYER), f"add {sorted(units - set(LAYER))} to LAYERS"


def test_imports_point_downwards():
  upward = []
  for unit, path in _sources():
    for target in _imported_units(path) - {unit}:
      if target not in LAYER:
        continue  # a name imported from the front door, e.g. __version__
      if LAYER[target] >= LAYER[unit]:
        upward.append(f"{path.relative_to(ROOT)} imports {target} "
                      f"(layer {LAYER[target]} >= {LAYER[unit]})")
  assert not upward, "\n".join(upward)


def test_schemas_and_nnx_stay_independent():
  for unit, path in _sources():
    found = _imported_units(path)
    if unit == "schemas":
      assert not found & {"linen", "nnx", "lipschitz", "tasks", "train",
                          "inference", "experiment"}, path
    if unit == "nnx":
      assert "linen" not in found, path


def test_the_rule_catches_an_upward_import(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from performer_jax.train import loop\n"
                 "from performer_jax import linen as pnn\n")
  assert _imported_units(bad) == {"train", "linen"}


def _subjects(test_dir: pathlib.Path) -> set[str]:
  """What a test folder's files may be named after: the modules and
  packages of the source folder it mirrors, and the folder's own name."""
  relative = test_dir.relative_to(ROOT / "tests")
  if not relative.parts:  # tests/ mirrors the package's top level
    source, own = PACKAGE, set(SUBJECTS) | {"configs"}
  else:
    source = MIRRORS.get(relative.parts[0], PACKAGE.joinpath(*relative.parts))
    own = {relative.name}
  names = set()
  if source.is_dir():
    names = {p.stem for p in source.glob("*.py")} | {
        p.name for p in source.iterdir() if p.is_dir()}
  return (names | own) - {"__init__", "__pycache__"}


@pytest.mark.parametrize("test_dir", sorted(
    {p.parent for p in (ROOT / "tests").rglob("test_*.py")}),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_test_files_are_named_after_a_module(test_dir):
  subjects = _subjects(test_dir)
  orphans = []
  for path in sorted(test_dir.glob("test_*.py")):
    stem = path.stem[len("test_"):]
    if not any(stem == s or stem.startswith(s + "_") for s in subjects):
      orphans.append(path.name)
  assert not orphans, (f"{test_dir.relative_to(ROOT)}: {orphans} name no "
                       f"module of {sorted(subjects)}")
