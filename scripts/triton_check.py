"""Compiles FAVOR+'s GPU kernels to sm_90 machine code without a GPU.

`jax.export` stops at Triton's IR; a GPU's XLA compiles it when the program
first runs. This script takes that IR for every kernel of a fwd+bwd call
(`implementation="pallas"`, lowered for CUDA here) and compiles it with the
`triton` package and its bundled ptxas, with the launch options the kernels
use (pallas_launch.GPU_OPTIONS), then prints each kernel's registers,
spilled bytes and shared memory, and fails (exit 1) where a kernel does not
compile or needs more shared memory than a block may have (227 KiB on
sm_90). It needs `pip install triton` (3.8.0 read this JAX's IR); a
`triton` that cannot read it says so and exits 2.

  python scripts/triton_check.py                      # B4 H8 L4096 D64 m256
  python scripts/triton_check.py --head-dim 128 --features 128 --chunk 64
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from jax._src.pallas.triton import lowering as triton_lowering

from performer_jax import attention
from performer_jax.attention import pallas_favor
from performer_jax.attention import pallas_launch
from performer_jax.attention import pallas_segments
# pylint: enable=g-import-not-at-top,wrong-import-position

SMEM_LIMIT = {90: 232448, 100: 232448, 80: 166912}  # bytes a block may use


def kernel_irs(length, head_dim, features, chunk, dtype) -> dict[str, str]:
  """`{kernel name: Triton IR text}` of causal and bidirectional fwd+bwd
  (B4 H8) as an H200 would get them (its SM count sets the stretches)."""
  irs = {}
  lower = triton_lowering.lower_jaxpr_to_triton_module

  def capture(jaxpr, *args, **kwargs):
    result = lower(jaxpr, *args, **kwargs)
    name = jaxpr.debug_info.func_name if jaxpr.debug_info else "kernel"
    irs[name] = result.module.operation.get_asm(enable_debug_info=False)
    return result

  saved = (triton_lowering.lower_jaxpr_to_triton_module,
           pallas_favor.platform, pallas_segments.sm_count)
  triton_lowering.lower_jaxpr_to_triton_module = capture
  pallas_favor.platform = lambda: "gpu"
  pallas_segments.sm_count = lambda: 132
  try:
    x = jax.ShapeDtypeStruct((4, length, 8, head_dim), dtype)
    proj = jax.ShapeDtypeStruct((features, head_dim), jnp.float32)
    for causal in (True, False):
      def loss(q, k, v, p, causal=causal):
        return jnp.sum(attention.favor_attention(
            q, k, v, p, causal=causal, chunk_size=chunk,
            implementation="pallas").astype(jnp.float32))
      jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(
          x, x, x, proj).lower(lowering_platforms=("cuda",))
  finally:
    (triton_lowering.lower_jaxpr_to_triton_module, pallas_favor.platform,
     pallas_segments.sm_count) = saved
  return irs


def compile_ir(name: str, ir: str, arch: int) -> dict:
  """Compiles one kernel's IR; `{"regs", "spill", "smem"}` or `{"error"}`."""
  import triton  # pylint: disable=g-import-not-at-top
  from triton.backends.compiler import GPUTarget  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, f"{name}.ttir")
    with open(path, "w") as f:
      f.write(ir)
    try:
      kernel = triton.compile(path, target=GPUTarget("cuda", arch, 32),
                              options=dict(pallas_launch.GPU_OPTIONS))
    except Exception as err:  # pylint: disable=broad-except
      lines = str(err).splitlines()
      if any("parse" in line.lower() for line in lines[:5]):
        raise SystemExit(f"triton {triton.__version__} cannot read this "
                         f"JAX's IR ({lines[0][:100]}); try triton==3.8.0")
      fatal = ([line for line in lines if "fatal" in line] or
               [line for line in lines if "error" in line.lower()] or
               lines[:1])
      return {"error": fatal[0].strip()[:160]}
    ptx = os.path.join(tmp, "k.ptx")
    with open(ptx, "w") as f:
      f.write(kernel.asm["ptx"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends",
                         "nvidia", "bin", "ptxas")
    info = subprocess.run(
        [ptxas, "-v", f"--gpu-name=sm_{arch}a", ptx, "-o", ptx + ".o"],
        capture_output=True, text=True, check=False).stderr
  regs = re.findall(r"Used (\d+) registers", info)
  spill = re.findall(r"(\d+) bytes spill stores", info)
  return {"regs": int(regs[0]) if regs else -1,
          "spill": int(spill[0]) if spill else 0,
          "smem": kernel.metadata.shared}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=4096)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--features", type=int, default=256)
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16",
                      choices=["bfloat16", "float32"])
  parser.add_argument("--arch", type=int, default=90, choices=sorted(
      SMEM_LIMIT))
  parser.add_argument("--warps", type=int, default=None,
                      help="override GPU_OPTIONS' num_warps (to compare)")
  parser.add_argument("--stages", type=int, default=None,
                      help="override GPU_OPTIONS' num_stages")
  parser.add_argument("--tile-elements", type=int, default=None,
                      help="override GPU_TILE_ELEMENTS (the C*F cap)")
  args = parser.parse_args()
  for key, value in (("num_warps", args.warps), ("num_stages", args.stages)):
    if value is not None:
      pallas_launch.GPU_OPTIONS[key] = value
  if args.tile_elements is not None:
    pallas_launch.GPU_TILE_ELEMENTS = args.tile_elements
  if importlib.util.find_spec("triton") is None:
    print("needs the triton package: pip install triton==3.8.0")
    return 2
  irs = kernel_irs(args.length, args.head_dim, args.features, args.chunk,
                   jnp.dtype(args.dtype))
  tile = pallas_favor.tile_rows(args.chunk, args.features, "gpu")
  print(f"sm_{args.arch}, {pallas_launch.GPU_OPTIONS}, tile {tile} rows, "
        f"D{args.head_dim} m{args.features} {args.dtype}")
  print("| kernel | registers | spilled bytes | shared memory |")
  print("|---|---|---|---|")
  failed = False
  for name, ir in irs.items():
    got = compile_ir(name, ir, args.arch)
    if "error" in got:
      failed = True
      print(f"| {name} | fails: {got['error']} | | |")
      continue
    over = got["smem"] > SMEM_LIMIT[args.arch]
    failed |= over
    print(f"| {name} | {got['regs']} | {got['spill']:,} | "
          f"{got['smem']:,}{' (too much)' if over else ''} |", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
