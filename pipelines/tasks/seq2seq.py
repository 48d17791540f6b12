"""summarization and translation: an encoder-decoder model (T5, BART, Marian…) rewrites each row.

T5-style models are told the task by a text prefix ("summarize: ", "translate
English to German: "); by default it comes from the model config's
``task_specific_params``, as in the Transformers pipelines, and is empty for
models that need none.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import PipelineError
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
        self._languages_pick_a_prefix()

    def params_key(self) -> str:
        return f"translation_{self.options.source_lang}_to_{self.options.target_lang}"

    def _languages_pick_a_prefix(self) -> None:
        """source_lang/target_lang exist to pick the config's prefix: a pair it doesn't name would rewrite every row
        with no prefix, without a word (T5 then doesn't translate), so it is refused, naming the pairs it has."""
        source, target = self.options.source_lang, self.options.target_lang
        if self.options.prefix is not None or (source is None and target is None):
            return
        params = getattr(self.config, "task_specific_params", None) or {}
        if self.params_key() in params:
            return
        pairs = sorted(key for key in params if key.startswith("translation_"))
        given = f"task.source_lang and target_lang ({source} and {target})"
        if pairs:
            raise PipelineError(
                f"translation: {given} pick no prefix of the model config's task_specific_params, which names "
                f"{', '.join(pairs)}: set them to one of those pairs (e.g. source_lang: "
                f"{pairs[0].split('_')[1]}, target_lang: {pairs[0].split('_to_')[-1]}), or write the prefix the model "
                "needs as task.prefix"
            )
        raise PipelineError(
            f"translation: {given}: the model config names no translation prefix for them to pick (they only pick "
            "one; they don't set a multilingual tokenizer's languages); remove them for a model that translates one "
            "pair without a prefix (Marian opus-mt), or write the prefix the model needs as task.prefix"
        )
