"""The batch tasks: what each Transformers pipeline task does to a batch of rows, knowing no Ray.

Owns: every task's options (:mod:`.options`, light: pydantic only), the task
contract and the shared label logic (:mod:`.base`), prompt building for decoder
models (:mod:`.prompts`), one module per task, and the OpenAI Batch requests
(:mod:`.openai_requests`, light: pydantic and :mod:`pipelines.io.openai_batch`'s
names; :mod:`.openai_batch`, the tasks that answer them). A task module may import
torch, transformers, numpy, pyarrow, :mod:`pipelines.errors` and the model-side
helpers of :mod:`pipelines.inference` (batching, kv_cache, decoding, loading's marks on a config); never Ray,
the output layout or the runner.
:func:`task_class` loads a task's implementation only when it is asked for, so
importing this package costs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipelines.tasks.options import TASK_OPTIONS, TaskOptions

if TYPE_CHECKING:
    from pipelines.tasks.base import Task

#: task name → (module, class) of its implementation.
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "feature-extraction": ("feature_extraction", "FeatureExtraction"),
    "text-classification": ("text_classification", "TextClassification"),
    "zero-shot-classification": ("zero_shot", "ZeroShotClassification"),
    "text-generation": ("text_generation", "TextGeneration"),
    "summarization": ("seq2seq", "Summarization"),
    "translation": ("seq2seq", "Translation"),
    "question-answering": ("question_answering", "QuestionAnswering"),
    "fill-mask": ("fill_mask", "FillMask"),
    "token-classification": ("token_classification", "TokenClassification"),
    "llm-label": ("llm_label", "LLMLabel"),
}
#: The implementations that answer the requests of an OpenAI Batch file (``input.format: openai-batch``).
OPENAI_IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "text-generation": ("openai_batch", "ChatCompletions"),
    "feature-extraction": ("openai_batch", "Embeddings"),
}


def task_class(name: str, input_format: str = "auto") -> type[Task]:
    """The implementation of the task called ``name`` for this input format (imports torch and transformers)."""
    table = OPENAI_IMPLEMENTATIONS if input_format == "openai-batch" else IMPLEMENTATIONS
    module, attribute = table[name]
    return getattr(importlib.import_module(f"pipelines.tasks.{module}"), attribute)


__all__ = ["IMPLEMENTATIONS", "TASK_OPTIONS", "TaskOptions", "task_class"]
