"""text-classification: the model's best label and its score, optionally every class's score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.tasks.base import Features, LabelTask, Outputs, label_names, softmax
from pipelines.tasks.options import TextClassificationOptions


class TextClassification(LabelTask):
    name = "text-classification"
    options_model = TextClassificationOptions
    model_class = "AutoModelForSequenceClassification"
    tokenizer_in_forward = False
    options: TextClassificationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = label_names(self.config)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        encoding = self.tokenize(texts)
        return Features.one_per_row(encoding, encoding["truncated"])

    def forward(self, model, inputs, extra):
        return {"logits": sequence_logits(model, inputs).float().cpu().numpy()}

    def _function(self) -> str:
        """``auto`` follows the Transformers pipeline: none for regression, sigmoid for multi-label or one output."""
        if self.options.function != "auto":
            return self.options.function
        problem = getattr(self.config, "problem_type", None)
        if problem == "regression":
            return "none"
        return "sigmoid" if problem == "multi_label_classification" or self.config.num_labels == 1 else "softmax"

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        logits = outputs.stacked("logits")
        function = self._function()
        if function == "softmax":
            scores = softmax(logits)
        elif function == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = logits
        return self.label_columns(scores)


def sequence_logits(model: Any, inputs: dict[str, Any]) -> Any:
    """A sequence classifier's logits. A decoder classifier (Llama, GPT-2, ...) scores each row at its last token
    that is not its config's pad token; where that pad token was lent by the tokenizer (the model had none, so
    the end-of-sequence token stands in), a text that ends in that token's text would be scored a token early:
    such a model is scored at each row's last token that the attention mask keeps, as a row alone would be."""
    import torch

    from pipelines.inference.loading import PAD_LENT

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not getattr(config, PAD_LENT, False) or not hasattr(model, "score") or "attention_mask" not in inputs:
        return model(**inputs).logits
    hidden = getattr(model, model.base_model_prefix)(**inputs).last_hidden_state
    mask = inputs["attention_mask"]
    last = (torch.arange(mask.shape[-1], device=mask.device) * mask).argmax(-1)  # either padding side
    return model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
