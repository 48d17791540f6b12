"""The batch tasks, by the name a job spec gives them."""

from __future__ import annotations

from pipelines.tasks.base import Task, TaskOptions
from pipelines.tasks.feature_extraction import FeatureExtraction
from pipelines.tasks.fill_mask import FillMask
from pipelines.tasks.llm_label import LLMLabel
from pipelines.tasks.question_answering import QuestionAnswering
from pipelines.tasks.seq2seq import Summarization, Translation
from pipelines.tasks.text_classification import TextClassification
from pipelines.tasks.text_generation import TextGeneration
from pipelines.tasks.token_classification import TokenClassification
from pipelines.tasks.zero_shot import ZeroShotClassification

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        FeatureExtraction,
        TextClassification,
        ZeroShotClassification,
        TextGeneration,
        Summarization,
        Translation,
        QuestionAnswering,
        FillMask,
        TokenClassification,
        LLMLabel,
    )
}

TASK_OPTIONS: dict[str, type[TaskOptions]] = {name: task.options_model for name, task in TASKS.items()}

__all__ = ["TASKS", "TASK_OPTIONS", "Task", "TaskOptions"]
