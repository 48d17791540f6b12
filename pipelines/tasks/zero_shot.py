"""zero-shot-classification: pick among candidate labels the model was never trained on.

Two methods:

- ``nli``: as the Transformers pipeline does, each (text, hypothesis) pair goes
  through an NLI model; with one label per row (``multi_label: false``) a
  softmax of the entailment logits across the labels ranks them; with
  ``multi_label: true``, or a single candidate label, each label is scored on
  its own: entailment against contradiction (for a two-class model, against
  the other class);
- ``embedding``: the text and each label's description are embedded with the same
  model and ranked by cosine similarity — works with any sentence-embedding
  model, e.g. the built-in ``minilm``; with ``multi_label: true``, or a single
  candidate label, each label's score is (cosine + 1) / 2.

``auto`` picks ``nli`` when the model config has an entailment label.

For ``nli``, a row's k pairs share its tokenization: the text is tokenized once
and joined to each hypothesis (tokenized once per actor) by the tokenizer's own
pair template, which :class:`PairTemplate` learns and checks at start-up; the
text is truncated to fit (``only_first``, as the pipeline does), never the
hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.errors import PipelineError
from pipelines.inference.batching import Ragged
from pipelines.inference.checks import nli_label_id
from pipelines.tasks.base import Features, LabelTask, Outputs, sequence_logits, softmax
from pipelines.tasks.feature_extraction import embed
from pipelines.tasks.options import TaskOptions, ZeroShotOptions


def contradiction_label_id(config: Any, entailment: int) -> int:
    """The class that entailment is scored against on its own: the one named contradiction.

    Without one (e.g. a two-class entailment / not_entailment model), the
    pipeline's choice: the first class, or the last when entailment is the first.
    """
    named = nli_label_id(config, "contra")
    if named is not None:
        return named
    return config.num_labels - 1 if entailment == 0 else 0


def resolve_method(options: ZeroShotOptions, config: Any) -> str:
    if options.method != "auto":
        return options.method
    return "nli" if nli_label_id(config, "entail") is not None else "embedding"


@dataclass(frozen=True)
class PairTemplate:
    """How a tokenizer joins two token sequences: special tokens before, between and after them,
    and the token type id of each of the five parts."""

    before: list[int]
    between: list[int]
    after: list[int]
    types: tuple[int, int, int, int, int]

    def join(self, first: list[int], second: list[int]) -> tuple[list[int], list[int]]:
        """(input ids, token type ids) of the pair."""
        parts = (self.before, first, self.between, second, self.after)
        ids = [token for part in parts for token in part]
        types = [kind for part, kind in zip(parts, self.types) for _ in part]
        return ids, types

    @classmethod
    def learn(cls, tokenizer: Any, first: str, seconds: list[str]) -> PairTemplate | None:
        """The template of ``tokenizer``, checked against its own pair encoding of ``first`` with each of
        ``seconds``; None where the pairs don't split that way (the caller then tokenizes pairs whole)."""
        if not getattr(tokenizer, "is_fast", False):  # sequence ids come from the Rust tokenizer
            return None
        encoding = tokenizer(first, seconds[0])
        ids = encoding["input_ids"]
        types = encoding.get("token_type_ids") or [0] * len(ids)
        # five parts in order: specials, first sequence, specials, second sequence, specials
        segments: list[list[int]] = [[], [], [], [], []]
        part = 0
        for position, owner in enumerate(encoding.sequence_ids(0)):
            target = 1 if owner == 0 else 3 if owner == 1 else part + part % 2
            if target < part:
                return None
            part = target
            segments[part].append(position)
        kinds = []
        for segment in segments:
            values = {types[p] for p in segment}
            if len(values) > 1:
                return None
            kinds.append(values.pop() if values else 0)
        template = cls(
            before=[ids[p] for p in segments[0]],
            between=[ids[p] for p in segments[2]],
            after=[ids[p] for p in segments[4]],
            types=(kinds[0], kinds[1], kinds[2], kinds[3], kinds[4]),
        )
        first_ids = tokenizer(first, add_special_tokens=False)["input_ids"]
        for second in seconds:
            whole = tokenizer(first, second)
            joined = template.join(first_ids, tokenizer(second, add_special_tokens=False)["input_ids"])
            if joined[0] != whole["input_ids"] or ("token_type_ids" in whole and joined[1] != whole["token_type_ids"]):
                return None
        return template


class ZeroShotClassification(LabelTask):
    name = "zero-shot-classification"
    options_model = ZeroShotOptions
    model_class = "AutoModel"
    tokenizer_in_forward = False
    options: ZeroShotOptions

    @classmethod
    def model_class_for(cls, options: TaskOptions, config: Any) -> str:
        assert isinstance(options, ZeroShotOptions)
        return "AutoModelForSequenceClassification" if resolve_method(options, config) == "nli" else "AutoModel"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = list(self.options.candidate_labels)
        self.method = resolve_method(self.options, self.config)
        self.hypotheses = [
            self.options.label_descriptions.get(label) or self.options.hypothesis_template.format(label)
            for label in self.labels
        ]
        self._check_labels_told_apart()
        if self.method == "nli":
            self._setup_nli()

    def _check_labels_told_apart(self) -> None:
        """Two labels whose hypotheses (or descriptions) are the same tokens get the same score on every row: a
        tokenizer that strips accents makes ``résumé`` and ``resume`` one, one without a character makes ``👍`` and
        ``👎`` the same unknown token. The first named would win every row, the other never."""
        seen: dict[tuple[int, ...], int] = {}
        for i, ids in enumerate(self.tokenizer(self.hypotheses, add_special_tokens=False)["input_ids"]):
            j = seen.setdefault(tuple(ids), i)
            if j != i:
                first, second = self.labels[j], self.labels[i]
                where = " or describe one in task.label_descriptions" if self.method == "embedding" else ""
                raise PipelineError(
                    f"{self.name}: candidate labels {first!r} and {second!r} are the same tokens to this model's "
                    f"tokenizer in the texts scored for them ({self.hypotheses[j]!r}, {self.hypotheses[i]!r}): it "
                    f"normalises text, or knows neither's characters, so their scores always tie and {first!r} "
                    f"would win every row; rename one to words the tokenizer tells apart{where}"
                )

    def _setup_nli(self) -> None:
        entailment = nli_label_id(self.config, "entail")
        if entailment is None or self.config.num_labels < 2:
            raise PipelineError(
                "zero-shot-classification: method nli needs an NLI model whose config labels include "
                "'entailment' and at least one other class; use an NLI model or set task.method: embedding"
            )
        self.entailment = entailment
        self.contradiction = contradiction_label_id(self.config, entailment)
        self.template = PairTemplate.learn(self.tokenizer, "Genève, a premise.", self.hypotheses)
        self.hypothesis_ids = [self.tokenizer(h, add_special_tokens=False)["input_ids"] for h in self.hypotheses]
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        self.room = [self.max_length - specials - len(ids) for ids in self.hypothesis_ids]
        if min(self.room) < 1:
            longest = self.hypotheses[int(np.argmin(self.room))]
            raise PipelineError(
                f"zero-shot-classification: the hypothesis {longest!r} leaves no room for the text within "
                f"max_length {self.max_length}; shorten it or raise batching.max_length"
            )

    def independent_scores(self) -> bool:
        return self.options.multi_label or len(self.labels) == 1

    def too_long_reason(self, where: str = "text") -> str:
        """With ``nli`` a text is cut where it and a hypothesis would pass max_length: a text under max_length too,
        which a reason naming max_length alone said was longer."""
        if self.method != "nli":
            return super().too_long_reason(where)
        return f"{where} longer than max_length (max_length is {self.max_length} tokens, the text and a label's " \
               "hypothesis together)" + self.cap_note()

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        if self.method != "embedding":
            return
        inputs = self.tokenizer(
            self.hypotheses, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            self.label_vectors = embed(model, inputs, "mean", normalize=True)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        if self.method == "embedding":
            encoding = self.tokenize(texts)
            return Features.one_per_row(encoding, encoding["truncated"])
        features = self._shared_pairs(texts) if self.template else self._whole_pairs(texts)
        features.row = np.repeat(np.arange(len(texts)), len(self.labels))
        return features

    def _shared_pairs(self, texts: list[str]) -> Features:
        """Each text tokenized once, joined to every hypothesis; the text cut to the room each one leaves."""
        assert self.template is not None
        # a long text's head (Task.heads: it overflows max_length, so the room of any hypothesis too)
        encoding = self.tokenizer(
            self.heads(texts), add_special_tokens=False, truncation=True, max_length=max(self.room)
        )
        cut = np.array([bool(e.overflowing) for e in encoding.encodings], dtype=bool)
        left = self.tokenizer.truncation_side == "left"
        ids, types = [], []
        for premise in encoding["input_ids"]:
            for room, hypothesis in zip(self.room, self.hypothesis_ids):
                premise_part = premise if len(premise) <= room else premise[-room:] if left else premise[:room]
                pair_ids, pair_types = self.template.join(premise_part, hypothesis)
                ids.append(pair_ids)
                types.append(pair_types)
        tokens = {"input_ids": Ragged.from_lists(ids)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            tokens["token_type_ids"] = Ragged.from_lists(types)
        lengths = np.fromiter(map(len, encoding["input_ids"]), dtype=np.int64, count=len(texts))
        return Features(tokens=tokens, row=np.zeros(0, np.int64), truncated=cut | (lengths > min(self.room)))

    def _whole_pairs(self, texts: list[str]) -> Features:
        """Every (text, hypothesis) pair through the tokenizer (a tokenizer whose pairs aren't a template)."""
        n, k = len(texts), len(self.labels)
        premises = [text for text in texts for _ in range(k)]
        encoding = self.tokenizer(
            premises, self.hypotheses * n, truncation="only_first", max_length=self.max_length, padding=False
        )
        features = Features.one_per_row(encoding)
        truncated = np.array([bool(e.overflowing) for e in encoding.encodings], dtype=bool)
        features.truncated = np.asarray(truncated.reshape(n, k).any(axis=1))
        return features

    def forward(self, model, inputs, extra):
        if self.method == "embedding":
            vectors_ = embed(model, inputs, "mean", normalize=True)
            return {"similarity": (vectors_ @ self.label_vectors.T).cpu().numpy()}
        logits = sequence_logits(model, inputs).float()  # a decoder NLI model: pooled as text-classification's
        return {"logits": logits[:, [self.contradiction, self.entailment]].cpu().numpy()}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        scores = self._scores(outputs, n_rows)
        return self.label_columns(scores)

    def _scores(self, outputs: Outputs, n_rows: int) -> np.ndarray:
        if self.method == "embedding":
            similarity = outputs.stacked("similarity")
            if self.independent_scores():  # one label alone too: a softmax over it is 1.0 on every row
                return (similarity + 1.0) / 2.0
            return softmax(similarity / self.options.temperature)
        # logits[row, label] = (contradiction, entailment)
        logits = outputs.stacked("logits").reshape(n_rows, len(self.labels), 2)
        if self.options.multi_label or len(self.labels) == 1:
            return softmax(logits, axis=-1)[..., 1]
        return softmax(logits[..., 1], axis=1)
