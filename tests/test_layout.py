"""The package layout: imports point downwards only (docs/contracts.md,
"Layers"), and every test file is named after what it tests."""

import ast
import pathlib
import re

import pytest

from tests.helpers import inputs

ROOT = pathlib.Path(inputs.REPO)
PACKAGE = ROOT / "performer_jax"


def _layers() -> tuple[tuple[str, ...], ...]:
  """The table under "## Layers" in docs/contracts.md, lowest first: the
  rule is written there once."""
  text = (ROOT / "docs" / "contracts.md").read_text()
  table = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
  rows = [line.split("|") for line in table.splitlines()
          if re.match(r"\| \d+ \|", line)]
  return tuple(tuple(re.findall(r"`([a-z_]+)`", row[2])) for row in rows)


# A module may import its own package and any package of a lower layer;
# packages that share a layer never import each other.
LAYERS = _layers()
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
    yield path.relative_to(PACKAGE).with_suffix("").parts[0], path
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
  assert len(LAYERS) >= 10 and all(LAYERS), LAYERS
  units = {unit for unit, _ in _sources()}
  assert units <= set(LAYER), (f"add {sorted(units - set(LAYER))} to the "
                               "layer table of docs/contracts.md")


def _upward(unit: str, imported: set[str]) -> list[str]:
  """The units of `imported` at `unit`'s layer or above (names imported
  from the front door that are not units, e.g. __version__, are fine)."""
  return sorted(t for t in imported - {unit}
                if t in LAYER and LAYER[t] >= LAYER[unit])


def test_imports_point_downwards():
  upward = [f"{path.relative_to(ROOT)} imports {target}"
            for unit, path in _sources()
            for target in _upward(unit, _imported_units(path))]
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
  assert _upward("attention", _imported_units(bad)) == ["linen", "train"]
  assert _upward("nnx", {"linen", "core", "nnx"}) == ["linen"]  # siblings
  assert not _upward("train", {"attention", "linen", "__version__"})


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
