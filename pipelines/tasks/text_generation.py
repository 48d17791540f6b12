"""text-generation: a causal LM continues each row's prompt (a template over its columns, or a chat turn)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.errors import PipelineError
from pipelines.tasks.base import Features
from pipelines.tasks.generation import GenerationTask
from pipelines.tasks.options import TextGenerationOptions
from pipelines.tasks.prompts import RowText, check_chat, fill, render, shared_start, text_input, tokenize_prompts


class TextGeneration(GenerationTask):
    name = "text-generation"
    options_model = TextGenerationOptions
    model_class = "AutoModelForCausalLM"
    padding_side = "left"  # every prompt ends where generation starts
    options: TextGenerationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.chat:
            check_chat(self.tokenizer, self.name, self.options.system_prompt)
        self.row_text = RowText(self.tokenizer)
        # prompt and generated tokens together must fit the model's positions
        self.prompt_budget = self.max_length
        if self.positions is not None:
            self.prompt_budget = min(self.max_length, self.positions - self.options.max_new_tokens)
        if self.prompt_budget < 1:
            raise PipelineError(
                f"text-generation: max_new_tokens ({self.options.max_new_tokens}) leaves no room for a prompt in "
                f"this model's {self.positions} positions; lower task.max_new_tokens"
            )

    def too_long_reason(self, where: str = "text") -> str:
        """Where the model's positions less ``max_new_tokens`` leave a prompt less room than max_length, that room:
        a prompt under max_length was cut there, and a reason naming max_length named a limit it was under."""
        if self.prompt_budget >= self.max_length:
            return super().too_long_reason(where)
        return (f"{where} longer than max_length (the prompt's room is {self.prompt_budget} tokens: the model's "
                f"{self.positions} positions less task.max_new_tokens {self.options.max_new_tokens})")

    def token_inputs(self) -> dict[str, str | None]:
        return text_input(self.options.prompt_template)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        prompts, errors = fill(self.options.prompt_template, texts, columns, self.row_text)
        keep = np.array([p is not None for p in prompts], dtype=bool)
        rendered = render(
            self.tokenizer, [p for p in prompts if p is not None], self.options.chat, self.options.system_prompt
        )
        encoding = (
            tokenize_prompts(self.row_text, rendered, self.options.chat, self.prompt_budget)
            if rendered
            else {"input_ids": [], "truncated": np.zeros(0, dtype=bool)}
        )
        features = self.features_from(encoding, self.seeds_for(texts, columns), keep)
        features.errors = errors
        return features

    def shared_start(self) -> tuple[list[int], list[int]]:
        return shared_start(self.options.prompt_template, self._prompt_ids)

    def _prompt_ids(self, filled: list[str]) -> list[list[int]]:
        """Token ids of filled templates, as ``encode`` computes them."""
        rendered = render(self.tokenizer, filled, self.options.chat, self.options.system_prompt)
        encoding = tokenize_prompts(self.row_text, rendered, self.options.chat, self.prompt_budget)
        return [list(ids) for ids in encoding["input_ids"]]
