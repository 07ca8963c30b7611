"""Tasks: each turns a `config.data` section into a `base.TaskData`.

`TASKS[name](data_config, process_index=..., process_count=...)` builds a
task; `DATA_CONFIGS[name](variant)` returns its default `config.data` for
variant "smoke" (seconds), "cpu" (a CPU demo) or "paper" (paper sizes).
"""

from performer_jax.tasks import pixels
from performer_jax.tasks import protein
from performer_jax.tasks import text

TASKS = {
    "protein_mlm": protein.make_mlm,
    "protein_lm": protein.make_lm,
    "text_lm": text.make,
    "pixel_lm": pixels.make,
}

DATA_CONFIGS = {
    "protein_mlm": protein.mlm_data_config,
    "protein_lm": protein.lm_data_config,
    "text_lm": text.data_config,
    "pixel_lm": pixels.data_config,
}
