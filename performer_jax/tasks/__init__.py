"""Tasks: each turns its `config.data` section into a `base.TaskData`.

Every task is one `base.Task` (name, data schema, per-variant data, build),
registered here by name.
"""

from performer_jax.tasks import copy
from performer_jax.tasks import pixels
from performer_jax.tasks import protein
from performer_jax.tasks import sentence
from performer_jax.tasks import text
from performer_jax.tasks.base import Task
from performer_jax.tasks.base import TaskData
from performer_jax.tasks.base import VARIANTS

TASKS: dict[str, Task] = {task.name: task for task in (
    protein.MLM, protein.LM, text.TASK, pixels.TASK, copy.TASK,
    sentence.TASK)}

__all__ = ["TASKS", "Task", "TaskData", "VARIANTS"]
