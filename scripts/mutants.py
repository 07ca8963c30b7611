"""Plants one-line bugs in scratch copies of the repository and runs the
tests that must catch them: a mutant that passes its tests survived.

Each mutant is (file, the exact old line, the new line, the tests to run).
The repository (without .git) is copied to `<scratch>/<name>`, the line is
replaced there (it must occur exactly once, so a stale mutant fails loudly
instead of testing nothing) and pytest runs the named tests in the copy,
with the copy first on PYTHONPATH so that it is the copy's code that is
imported. The working tree and its git state are never touched.

  python scripts/mutants.py                      # every mutant
  python scripts/mutants.py gelu_to_relu --baseline -- -x

--baseline also runs the tests on an unmutated copy first (they must pass,
or a "killed" mutant proves nothing). Arguments after `--` go to pytest.
Exit status: 0 when every mutant was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache",
                                 "*.egg-info")


@dataclasses.dataclass(frozen=True)
class Mutant:
  path: str  # relative to the repository root
  old: str   # one whole line, exactly as in the file
  new: str
  tests: tuple[str, ...]  # pytest arguments: files, node ids, -k filters


MUTANTS = {
    # The protein masked-LM source feeds the uncorrupted window.
    "protein_mlm_unmasked": Mutant(
        "performer_jax/tasks/protein.py",
        '    out["inputs"][:n] = inputs',
        '    out["inputs"][:n] = window',
        ("tests/tasks/test_masking.py", "tests/tasks/test_tasks.py")),
    "eval_step_ignores_key_mask": Mutant(
        "performer_jax/train/steps.py",
        '                             key_mask_BL=batch["key_mask"], '
        'deterministic=True)',
        '                             key_mask_BL=None, deterministic=True)',
        ("tests/train/test_steps_losses.py", "tests/train/test_steps.py",
         "tests/train/test_trainer_e2e.py::test_end_to_end")),
    "train_step_ignores_key_mask": Mutant(
        "performer_jax/train/steps.py",
        '          variables, part["inputs"], key_mask_BL=part["key_mask"],',
        '          variables, part["inputs"], key_mask_BL=None,',
        ("tests/train/test_steps_losses.py", "tests/train/test_steps.py")),
    # Exact causal attention aligns queries with the start of the keys.
    "causal_offset_zero": Mutant(
        "performer_jax/attention/exact.py",
        "  offset = kv_len - q_len if q_offset is None else q_offset",
        "  offset = 0 if q_offset is None else q_offset",
        ("tests/attention/test_exact.py", "tests/linen/test_attention.py")),
    "gelu_to_relu": Mutant(
        "performer_jax/linen/transformer.py",
        "  return wo(nn.gelu(wi(x_BLD)))",
        "  return wo(nn.relu(wi(x_BLD)))",
        ("tests/linen/test_transformer_reference.py",)),
    # A GPU's stretches start from the seed alone, not from the summaries
    # of the stretches before them.
    "stretches_drop_their_seeds": Mutant(
        "performer_jax/attention/pallas_segments.py",
        "      seed=(flat(m_in_BPH), flat(p_BPHFE)), **kw)",
        "      seed=seed, **kw)",
        ("tests/attention/test_pallas_favor.py", "-k", "stretches")),
    # The zero padding of the last stretch counts as keys.
    "stretch_padding_counted": Mutant(
        "performer_jax/attention/pallas_segments.py",
        "    if key_mask_BL is None and not self.pad:",
        "    if key_mask_BL is None:",
        ("tests/attention/test_pallas_favor.py", "-k", "stretches")),
    # The causal backward takes the even chunk's stored state for the odd
    # chunk after it instead of recomputing that chunk's own.
    "odd_chunk_state_not_recomputed": Mutant(
        "performer_jax/attention/pallas_calls.py",
        "    return jax.lax.cond(jax.lax.rem(n, 2) == 1, odd,",
        "    return jax.lax.cond(jax.lax.rem(n, 2) == 7, odd,",
        ("tests/attention/test_pallas_favor.py", "-k", "seeded")),
    # "auto" never runs the Pallas kernels.
    "auto_never_pallas": Mutant(
        "performer_jax/attention/api.py",
        "    if pallas_favor.preferred(kernel):",
        "    if False:",
        ("tests/attention/test_pallas_favor.py", "-k", "auto_rule")),
}


def make_copy(dest: pathlib.Path) -> None:
  shutil.rmtree(dest, ignore_errors=True)
  shutil.copytree(REPO, dest, ignore=IGNORED)


def plant(root: pathlib.Path, mutant: Mutant) -> None:
  """Replaces the mutant's line in the copy; raises unless it occurs once."""
  path = root / mutant.path
  lines = path.read_text().split("\n")
  hits = [i for i, line in enumerate(lines) if line == mutant.old]
  if len(hits) != 1:
    raise SystemExit(f"{mutant.path}: the line {mutant.old!r} occurs "
                     f"{len(hits)} times (must be once); update the mutant")
  lines[hits[0]] = mutant.new
  path.write_text("\n".join(lines))


def run_tests(root: pathlib.Path, tests: tuple[str, ...],
              pytest_args: list[str]) -> tuple[int, list[str], float]:
  """(pytest's exit status, the failed test ids, seconds) in the copy."""
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                      "cpu"))
  env["PYTHONPATH"] = os.pathsep.join(
      [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  check = subprocess.run(
      [sys.executable, "-c", "import performer_jax; "
       "print(performer_jax.__file__)"], cwd=root, env=env,
      capture_output=True, text=True, check=True)
  if not check.stdout.strip().startswith(str(root)):
    raise SystemExit(f"the copy is not what imports: {check.stdout}")
  start = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
       *pytest_args, *tests], cwd=root, env=env, capture_output=True,
      text=True)
  failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
  if proc.returncode not in (0, 1):  # not "some tests failed": show why
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
  return proc.returncode, failed, time.time() - start


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help=f"of {sorted(MUTANTS)}")
  parser.add_argument("--scratch", default=os.path.join(
      tempfile.gettempdir(), "mutants"), help="where the copies go")
  parser.add_argument("--baseline", action="store_true",
                      help="first run each mutant's tests unmutated")
  parser.add_argument("--keep", action="store_true",
                      help="keep the copies (to rerun a test by hand)")
  argv = sys.argv[1:] if argv is None else argv
  pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
  args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  unknown = sorted(set(args.names) - set(MUTANTS))
  if unknown:
    parser.error(f"unknown mutants {unknown}; choose from {sorted(MUTANTS)}")
  scratch = pathlib.Path(args.scratch)
  survivors = []
  for name in args.names or list(MUTANTS):
    mutant = MUTANTS[name]
    root = scratch / name
    make_copy(root)
    if args.baseline:
      code, failed, _ = run_tests(root, mutant.tests, pytest_args)
      if code != 0:
        raise SystemExit(f"{name}: the unmutated tests fail ({failed}); "
                         "fix them first")
    plant(root, mutant)
    code, failed, seconds = run_tests(root, mutant.tests, pytest_args)
    if code == 0:
      survivors.append(name)
      print(f"SURVIVED {name} ({seconds:.0f} s): {' '.join(mutant.tests)}")
    else:
      print(f"killed   {name} ({seconds:.0f} s) by {len(failed)} tests:")
      for test in failed or [f"pytest exit status {code}"]:
        print(f"    {test}")
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  print(f"{len(survivors)} of {len(args.names or MUTANTS)} mutants survived"
        + (f": {' '.join(survivors)}" if survivors else ""))
  return 1 if survivors else 0


if __name__ == "__main__":
  sys.exit(main())
