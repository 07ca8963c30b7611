"""`performer-generate`: samples from a trained causal model.

  performer-generate --workdir /tmp/protein_lm --prompt MKV --num-samples 4

Text models write text, protein models FASTA (cut at the end token), pixel
models a PNG grid. Prompts: `--prompt` or `--prompt-file` (FASTA, or one per
line); a model with a start token samples from it without a prompt. Each
prompt is prefilled in one pass, then `--num-samples` continuations are
decoded in batches of `--batch-size`. Padding, start and mask tokens are
never sampled.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from performer_jax.inference import cli
from performer_jax.inference import loading
from performer_jax.linen import decoding


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="performer-generate", description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_model_arguments(parser)
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--prompt", default=None, help="one prompt")
  source.add_argument("--prompt-file", default=None,
                      help="prompts: FASTA, or one per line")
  parser.add_argument("--num-samples", type=int, default=1,
                      help="samples per prompt")
  parser.add_argument("--max-len", type=int, default=None,
                      help="tokens per sample, prompt included, start token "
                      "not counted (default and maximum: the training "
                      "length data.seq_len)")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top-k", type=int, default=0,
                      help="sample among the k most likely tokens (0: all)")
  parser.add_argument("--greedy", action="store_true",
                      help="take the most likely token (ignores temperature)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--output", default="-",
                      help="file to write ('-': stdout; pixel models: a "
                      "PNG, default samples.png)")
  return parser


def prompts(args: argparse.Namespace, io_) -> list[cli.Record]:
  """The prompts as records (token ids without the start token)."""
  if args.prompt_file is not None:
    return list(cli.iter_records(args.prompt_file, io_))
  return prompt_records(io_, args.prompt, "--prompt")


def prompt_records(io_, prompt: str | None, flag: str = "prompt"
                   ) -> list[cli.Record]:
  """One prompt as a record; None samples from the start token."""
  if prompt is not None:
    if not prompt.strip():
      raise ValueError(f"{flag} is empty; give some text, or leave "
                       f"{flag} out to sample from the start token")
    return [cli.Record("prompt", cli.encode(io_, prompt, flag))]
  if io_.bos is None:
    raise ValueError(f"this model has no start token: give {flag}"
                     + (" or --prompt-file" if flag.startswith("--") else ""))
  return [cli.Record("sample", np.zeros((0,), np.int32))]


def decoded(io_, tokens: np.ndarray):
  """A sample as its user sees it: text (residues, bytes), or a uint8
  `[H, W, C]` image for pixel models."""
  if io_.image_shape is not None:
    return np.asarray(tokens, np.uint8).reshape(io_.image_shape)
  return io_.decode(tokens)


def sample(loaded: loading.LoadedModel, records: list[cli.Record], *,
           num_samples: int, max_len: int, temperature: float, top_k: int,
           greedy: bool, seed: int, batch_size: int
           ) -> list[tuple[str, np.ndarray]]:
  """`(name, int32 tokens)` per sample: the prompt and its continuation,
  start token dropped, cut after the end token."""
  io_ = loaded.io
  start = [] if io_.bos is None else [io_.bos]
  total = max_len + len(start)
  rows = [(f"{r.name}_sample{k + 1}", np.concatenate(
      [start, r.tokens]).astype(np.int32)) for r in records
          for k in range(num_samples)]
  width = max(len(row) for _, row in rows)
  decoder = loaded.make_model(decode=True)
  suppress = tuple(t for t in io_.special if t != io_.eos)
  out = []
  for i, chunk in enumerate(cli.batches(len(rows), batch_size)):
    prompt_BP = np.zeros((batch_size, width), np.int32)
    lengths_B = np.full((batch_size,), width, np.int32)
    for b, r in enumerate(chunk):
      prompt_BP[b, :len(rows[r][1])] = rows[r][1]
      lengths_B[b] = len(rows[r][1])
    # Unused rows of the last batch repeat row 0: one compiled shape.
    prompt_BP[len(chunk):], lengths_B[len(chunk):] = prompt_BP[0], lengths_B[0]
    tokens_BT = decoding.generate(
        decoder, loaded.variables, jnp.asarray(prompt_BP),
        jax.random.fold_in(jax.random.PRNGKey(seed), i), max_len=total,
        temperature=temperature, top_k=top_k, greedy=greedy,
        prompt_lengths_B=jnp.asarray(lengths_B), suppress_tokens=suppress)
    for b, r in enumerate(chunk):
      tokens = np.asarray(tokens_BT[b, len(start):])
      if io_.eos is not None:
        ends = np.flatnonzero(tokens[len(rows[r][1]) - len(start):]
                              == io_.eos)
        if ends.size:
          tokens = tokens[:len(rows[r][1]) - len(start) + ends[0]]
      out.append((rows[r][0], tokens))
  return out


def image_grid(images_NHWC: np.ndarray, cols: int = 8) -> np.ndarray:
  """uint8 `[rows * (H + 2), cols * (W + 2), C]`: the images tiled with a
  2-pixel border."""
  n, h, w, c = images_NHWC.shape
  cols = min(cols, n)
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + 2), cols * (w + 2), c), 255, np.uint8)
  for i, image in enumerate(images_NHWC):
    y, x = (i // cols) * (h + 2) + 1, (i % cols) * (w + 2) + 1
    grid[y:y + h, x:x + w] = image
  return grid


def _write(loaded: loading.LoadedModel, samples, output: str) -> None:
  io_ = loaded.io
  if io_.image_shape is not None:
    # pylint: disable-next=g-import-not-at-top
    import matplotlib.pyplot as plt
    images = np.stack([decoded(io_, s) for _, s in samples])
    grid = image_grid(images)
    path = "samples.png" if output == "-" else output
    plt.imsave(path, grid[..., 0] if grid.shape[-1] == 1 else grid,
               cmap="gray", vmin=0, vmax=255)
    print(f"wrote {len(samples)} images to {path}")
    return
  if io_.fasta:
    text = "".join(f">{name}\n" + "\n".join(
        seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n"
                   for name, seq in ((n, decoded(io_, s)) for n, s in samples))
  else:
    text = "".join(f"=== {name} ===\n{decoded(io_, s)}\n"
                   for name, s in samples)
  if output == "-":
    sys.stdout.write(text)
  else:
    with open(output, "w", encoding="utf-8") as f:
      f.write(text)


def check_lengths(loaded: loading.LoadedModel, records: list[cli.Record],
                  max_len: int | None, flag: str = "--max-len") -> int:
  """The number of tokens per sample (`max_len`, default the training
  length), checked against the model and the prompts."""
  io_ = loaded.io
  if not io_.causal:
    raise ValueError(f"this is a masked language model "
                     f"({loaded.config.task}); it scores and embeds "
                     "(performer-score) but does not generate")
  seq_len = loaded.config.data.seq_len
  given = max_len
  max_len = seq_len if max_len is None else max_len
  if not 1 <= max_len <= seq_len:
    raise ValueError(f"{flag} must be in [1, {seq_len}] (the training "
                     f"length), got {max_len}")
  if io_.image_shape is not None:
    pixels = math.prod(io_.image_shape)
    if seq_len < pixels:
      raise ValueError(f"this model was trained on windows of {seq_len} "
                       f"intensities, not whole {io_.image_shape} images; "
                       "train the cpu or paper variant to sample images")
    if given is not None and max_len != pixels:
      raise ValueError(f"pixel samples are whole {io_.image_shape} images: "
                       f"{flag} must be {pixels}")
  for r in records:
    if len(r.tokens) >= max_len:
      raise ValueError(f"prompt {r.name!r} has {len(r.tokens)} tokens, which "
                       f"leaves nothing to generate within {flag} "
                       f"{max_len}; shorten it or raise {flag}")
  return max_len


def generate_samples(loaded: loading.LoadedModel, records: list[cli.Record],
                     *, num_samples: int = 1, max_len: int | None = None,
                     temperature: float = 1.0, top_k: int = 0,
                     greedy: bool = False, seed: int = 0,
                     batch_size: int = 32, flags: bool = False
                     ) -> list[tuple[str, np.ndarray]]:
  """What performer-generate writes, before formatting: `(name, tokens)`
  per sample (see `sample`), after checking every argument. `flags` names
  the arguments as the command's flags in errors."""
  name = (lambda n: "--" + n.replace("_", "-")) if flags else (lambda n: n)
  for key, value in (("num_samples", num_samples),
                     ("batch_size", batch_size)):
    if value < 1:
      raise ValueError(f"{name(key)} must be >= 1")
  if not greedy and temperature <= 0:
    raise ValueError(f"{name('temperature')} must be > 0, got {temperature}; "
                     f"use {'--greedy' if flags else 'greedy=True'} for "
                     "argmax decoding")
  max_len = check_lengths(loaded, records, max_len, name("max_len"))
  return sample(loaded, records, num_samples=num_samples, max_len=max_len,
                temperature=temperature, top_k=top_k, greedy=greedy,
                seed=seed,
                batch_size=min(batch_size, len(records) * num_samples))


def _main(argv: Sequence[str] | None) -> None:
  args = _parser().parse_args(argv)
  loaded = cli.load(args)
  if not loaded.io.causal:  # before reading prompts: the clearer error
    check_lengths(loaded, [], None)
  if args.output != "-":
    cli.check_output(args.output, "--output")
  records = prompts(args, loaded.io)
  samples = generate_samples(
      loaded, records, num_samples=args.num_samples, max_len=args.max_len,
      temperature=args.temperature, top_k=args.top_k, greedy=args.greedy,
      seed=args.seed, batch_size=args.batch_size, flags=True)
  _write(loaded, samples, args.output)


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-generate`."""
  cli.run(_main, argv)


if __name__ == "__main__":
  main()
