"""summarization and translation: an encoder-decoder model (T5, BART, Marian…) rewrites each row.

T5-style models are told the task by a text prefix ("summarize: ", "translate
English to German: "); by default it comes from the model config's
``task_specific_params``, as in the Transformers pipelines, and is empty for
models that need none.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from transformers import AutoModelForSeq2SeqLM

from pipelines.tasks.base import Features, TaskOptions
from pipelines.tasks.generation import GenerationOptions, GenerationTask


class Seq2SeqOptions(GenerationOptions):
    prefix: str | None = Field(
        default=None, description="Text put before each row; default: the model config's task prefix, else none."
    )


class SummarizationOptions(Seq2SeqOptions):
    type: Literal["summarization"]


class TranslationOptions(Seq2SeqOptions):
    type: Literal["translation"]
    source_lang: str | None = Field(default=None, description="e.g. en; with target_lang picks the config's prefix.")
    target_lang: str | None = Field(default=None, description="e.g. de")


class Seq2SeqTask(GenerationTask):
    padding_side = "right"

    @classmethod
    def model_class(cls, options: TaskOptions, config: Any) -> type:
        return AutoModelForSeq2SeqLM

    def params_key(self) -> str:
        raise NotImplementedError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix = self.options.prefix
        if self.prefix is None:
            params = (getattr(self.config, "task_specific_params", None) or {}).get(self.params_key()) or {}
            self.prefix = params.get("prefix") or ""

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        encoding = self.tokenize([self.prefix + text for text in texts])
        return self.features_from(encoding, self.seeds_for(texts, columns))


class Summarization(Seq2SeqTask):
    name = "summarization"
    options_model = SummarizationOptions
    text_output = "summary_text"

    def params_key(self) -> str:
        return "summarization"


class Translation(Seq2SeqTask):
    name = "translation"
    options_model = TranslationOptions
    text_output = "translation_text"

    def params_key(self) -> str:
        return f"translation_{self.options.source_lang}_to_{self.options.target_lang}"
