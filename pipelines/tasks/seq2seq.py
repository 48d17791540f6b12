"""summarization and translation: an encoder-decoder model (T5, BART, Marian…) rewrites each row.

T5-style models are told the task by a text prefix ("summarize: ", "translate
English to German: "); by default it comes from the model config's
``task_specific_params``, as in the Transformers pipelines, and is empty for
models that need none.
"""

from __future__ import annotations

from typing import Any

from pipelines.inference.checks import check_translation_languages
from pipelines.tasks.base import Features
from pipelines.tasks.generation import GenerationTask
from pipelines.tasks.options import Seq2SeqOptions, SummarizationOptions, TranslationOptions


class Seq2SeqTask(GenerationTask):
    model_class = "AutoModelForSeq2SeqLM"
    padding_side = "right"
    options: Seq2SeqOptions

    def params_key(self) -> str:
        raise NotImplementedError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        params = (getattr(self.config, "task_specific_params", None) or {}).get(self.params_key()) or {}
        self.prefix: str = self.options.prefix if self.options.prefix is not None else params.get("prefix") or ""

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        encoding = self.tokenize([self.prefix + text for text in texts])
        return self.features_from(encoding, self.seeds_for(texts, columns))


class Summarization(Seq2SeqTask):
    name = "summarization"
    options_model = SummarizationOptions

    def params_key(self) -> str:
        return "summarization"


class Translation(Seq2SeqTask):
    name = "translation"
    options_model = TranslationOptions
    options: TranslationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_translation_languages(self.options, getattr(self.config, "task_specific_params", None))

    def params_key(self) -> str:
        return f"translation_{self.options.source_lang}_to_{self.options.target_lang}"
