"""Chat and evaluation tasks (conversations with optional scoring) and the mixtures that stages train on.

Every task is a list of conversations in the nanochat.chat format; see nanochat.tasks.base for the interface and
nanochat.tasks.registry for building tasks and mixtures by name (the names used in conf/mixture/*.yaml).
"""
from nanochat.tasks.base import Task, TaskMixture, TaskSequence, extract_answer, render_mc
from nanochat.tasks.registry import (
    TASKS, build_from_config, build_mixture, build_sequence, build_task, build_tasks, validate_spec,
)

__all__ = [
    "Task", "TaskMixture", "TaskSequence", "extract_answer", "render_mc",
    "TASKS", "build_from_config", "build_mixture", "build_sequence", "build_task", "build_tasks", "validate_spec",
]
