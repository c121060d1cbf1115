"""HumanEval (openai/openai_humaneval, 164 problems): write a Python function; scored by running its tests.

The user message is the problem's prompt (imports, signature, docstring); the reference reply is the prompt
plus the canonical body. ``evaluate`` builds a program from the prompt's imports, the first fenced code block
of the completion (or the whole completion), the problem's tests and ``check(entry_point)``, and runs it in
the sandbox of nanochat.execution (5 s, 256 MB).
"""
from __future__ import annotations

import re

from nanochat.tasks.base import RowsTask
from nanochat.tasks.sources import load_rows

_FENCE = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)```", re.DOTALL)


def extract_imports(prompt: str) -> str:
    """The import lines at the top of the prompt (up to the first other code line)."""
    imports = []
    for line in prompt.splitlines():
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_program(completion: str) -> str:
    """The first fenced code block of the completion, else the whole completion."""
    match = _FENCE.search(completion)
    return (match.group(1) if match else completion).strip()


def build_program(conversation: dict, completion: str) -> str:
    imports = extract_imports(conversation["messages"][0]["content"])
    return (f"{imports}\n\n{extract_program(completion)}\n\n{conversation['test']}\n"
            f"check({conversation['entry_point']})\n")


class HumanEval(RowsTask):
    EVAL_TYPE = "generative"
    name = "humaneval"

    def __init__(self, local_path=None, timeout: float = 5.0, memory_mb: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.timeout, self.memory_mb = timeout, memory_mb
        self.ds = load_rows("openai/openai_humaneval", None, "test", local_path=local_path,
                            columns=("task_id", "prompt", "canonical_solution", "test", "entry_point"))

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": f"{row['prompt']}\n{row['canonical_solution']}"},
            ],
            "task_id": row["task_id"],
            "entry_point": row["entry_point"],
            "test": row["test"],
        }

    def evaluate(self, conversation: dict, completion: str) -> bool:
        from nanochat.execution import run_program  # lazy: the sandbox is only needed when scoring

        result = run_program(build_program(conversation, completion), timeout=self.timeout, memory_mb=self.memory_mb)
        return bool(result.passed)
