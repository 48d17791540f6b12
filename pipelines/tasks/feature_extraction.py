"""feature-extraction: one pooled, optionally L2-normalised embedding per row."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F

from pipelines.tasks.base import Features, Outputs, Task, vectors
from pipelines.tasks.options import FeatureExtractionOptions


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token vectors ``[b, L, d]`` into one vector per sequence, ignoring padding."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        # Works for either padding side: the last position whose mask is 1.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def embed(model: torch.nn.Module, inputs: dict[str, torch.Tensor], how: str, normalize: bool) -> torch.Tensor:
    """Float32 sentence embeddings of a padded micro-batch."""
    hidden = model(**inputs).last_hidden_state
    vectors_ = pool(hidden, inputs["attention_mask"], how).float()
    return F.normalize(vectors_, dim=-1) if normalize else vectors_


class FeatureExtraction(Task):
    name = "feature-extraction"
    options_model = FeatureExtractionOptions
    model_class = "AutoModel"
    tokenizer_in_forward = False
    options: FeatureExtractionOptions

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        encoding = self.tokenize(texts)
        return Features.one_per_row(encoding, encoding["truncated"])

    def forward(self, model, inputs, extra):
        return {"embedding": embed(model, inputs, self.options.pooling, self.options.normalize).cpu().numpy()}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        return {"embedding": vectors(outputs.stacked("embedding"))}

    def output_schema(self) -> pa.Schema:
        width = self.config.hidden_size
        return pa.schema([pa.field("embedding", pa.list_(pa.float32(), width))])
