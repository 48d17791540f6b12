"""token-classification (NER): labelled spans of each row's text, with character offsets.

Aggregation strategies as the Transformers pipeline defines them:

- ``none``: every token whose label is not ignored, labelled with its raw tag (``B-PER``);
- ``simple``: tokens grouped into entities by their BIO tags, score = mean token score;
- ``first`` / ``average`` / ``max``: tokens first fused into words (a word's label
  is its first token's, the average of its tokens' scores, or its most confident
  token's), then words grouped into entities like ``simple``.

``word`` is the entity's text as it appears in the row (``text[start:end]``),
not the tokenizer's (lower-cased, ``##``-joined) rendering of it. ``start``/``end``
are Python string indices (code points); an end stays past the combining marks
of its last letter where the tokenizer drops them (``DroppedMarks``), where the
pipeline's would cut that letter in two.

A text longer than ``max_length`` is cut into windows overlapping by ``stride``
tokens (each window a feature of its row), and the windows' entities are merged
as the pipeline merges them when given a stride: of two that overlap, the longer
stays (or, as long, the surer). ``stride: null`` truncates instead, as the
pipeline does by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.errors import PipelineError
from pipelines.tasks.base import DroppedMarks, Features, Outputs, Task, label_names
from pipelines.tasks.options import TokenClassificationOptions

ENTITY = pa.struct(
    [
        pa.field("entity_group", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("word", pa.string()),
        pa.field("start", pa.int32()),
        pa.field("end", pa.int32()),
    ]
)


def split_tag(label: str) -> tuple[str, str]:
    """``B-PER`` → (``B``, ``PER``); a label without a BIO prefix is an inside tag of itself."""
    if label[:2] in ("B-", "I-"):
        return label[0], label[2:]
    return "I", label


def merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows, in text order; of two that overlap, the longer (or, as long, the surer)
    stays: the Transformers pipeline's rule."""
    merged: list[dict] = []
    for entity in sorted(entities, key=lambda e: e["start"]):
        if not merged:
            merged.append(entity)
            continue
        previous = merged[-1]
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                merged[-1] = entity
        else:
            merged.append(entity)
    return merged


class TokenClassification(Task):
    name = "token-classification"
    options_model = TokenClassificationOptions
    model_class = "AutoModelForTokenClassification"
    tokenizer_in_forward = False
    options: TokenClassificationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = np.asarray(label_names(self.config), dtype=object)
        tags = [split_tag(label) for label in self.labels]
        self.begins = np.array([bi == "B" for bi, _ in tags])
        self.tags = np.asarray([tag for _, tag in tags], dtype=object)
        self.ignored = np.isin(self.labels, self.options.ignore_labels)
        backend = getattr(getattr(self.tokenizer, "backend_tokenizer", None), "model", None)
        self.subword_prefix = getattr(backend, "continuing_subword_prefix", None)
        self.stride, self.window_step = self._windows()
        self.marks = DroppedMarks(self.tokenizer)

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        windows = self.stride is not None
        more: dict[str, Any] = {"return_overflowing_tokens": True, "stride": self.stride} if windows else {}
        side = self.tokenizer.truncation_side
        if windows:  # windows from the text's start, whatever side the model's tokenizer cuts: see _windows
            self.tokenizer.truncation_side = "right"
        try:
            encoding = self.tokenize(texts, return_offsets_mapping=True, return_special_tokens_mask=True, **more)
        finally:
            self.tokenizer.truncation_side = side
        features = Features.one_per_row(encoding)
        if windows:  # a long text is cut into overlapping windows, each a feature of its row: nothing is lost
            features.row = np.asarray(encoding["overflow_to_sample_mapping"], dtype=np.int64)
            features.truncated = np.zeros(len(texts), dtype=bool)
        else:
            features.truncated = encoding["truncated"]
        n = len(features)
        offsets, real, subword, text = (np.empty(n, dtype=object) for _ in range(4))
        for f, row in enumerate(features.row):
            offsets[f] = np.asarray(encoding["offset_mapping"][f], dtype=np.int64).reshape(-1, 2)
            real[f] = ~np.asarray(encoding["special_tokens_mask"][f], dtype=bool)
            subword[f] = self._subwords(texts[row], encoding["input_ids"][f], offsets[f])
            offsets[f] = self.marks.extend(texts[row], offsets[f], real[f])  # after the pipeline's subword test
            text[f] = texts[row]
        features.extra = {"offsets": offsets, "real": real, "subword": subword, "text": text}
        return features

    def _windows(self) -> tuple[int | None, int]:
        """The overlap between windows: as given where a window has room for more than it (as the Transformers
        pipeline takes it), else half that room (where the pipeline's tokenizer fails); None: no windows. And how
        many of a row's tokens one window starts after the one before it: a window holds ``max_length`` less the
        special tokens, and overlaps the one before by the stride (as the fast tokenizer cuts them, from the
        start)."""
        if self.options.stride is None:
            return None, 0
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        if room < 2:
            raise PipelineError(
                f"token-classification: max_length {self.max_length} leaves no room for text; "
                "raise batching.max_length"
            )
        stride = self.options.stride if self.options.stride < room else room // 2
        return stride, room - stride

    def _subwords(self, text: str, ids: list[int], offsets: np.ndarray) -> np.ndarray:
        """Which tokens continue the word before them (the Transformers pipeline's test)."""
        starts, ends = offsets[:, 0], offsets[:, 1]
        if self.subword_prefix:  # word-aware tokenizer: a continuation token is longer than its text ("##ing")
            tokens = self.tokenizer.convert_ids_to_tokens(ids)
            subword = np.array([len(t) != e - s for t, s, e in zip(tokens, starts, ends)], dtype=bool)
        else:  # fallback heuristic: no space before the token
            subword = np.array([s > 0 and " " not in text[s - 1 : s + 1] for s in starts], dtype=bool)
        unknown = self.tokenizer.unk_token_id
        if unknown is not None:
            subword &= np.asarray(ids) != unknown
        return subword

    def forward(self, model, inputs, extra):
        probs = model(**inputs).logits.float().softmax(-1).cpu().numpy()
        lengths = inputs["attention_mask"].sum(dim=1).cpu().numpy()
        return {"probs": [p[:n] for p, n in zip(probs, lengths)]}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        probs = outputs.listed("probs")
        found: list[list[dict]] = [[] for _ in range(n_rows)]
        windows = np.bincount(features.row, minlength=n_rows)
        seen = np.zeros(n_rows, dtype=np.int64)  # windows of each row so far: a feature's window number
        by_token: list[dict[int, dict]] = [{} for _ in range(n_rows)]
        for f, row in enumerate(features.row):
            entities, tokens = self._entities(
                probs[f], *(features.extra[k][f] for k in ("offsets", "real", "subword", "text"))
            )
            if tokens is not None and windows[row] > 1:  # none: each token once, by its place in the row's tokens
                first = seen[row] * self.window_step
                for entity, token in zip(entities, tokens.tolist(), strict=True):
                    kept = by_token[row].get(first + token)
                    if kept is None or entity["score"] > kept["score"]:
                        by_token[row][first + token] = entity
            else:
                found[row] += entities
            seen[row] += 1
        merged: list[list[dict]] = [
            [by_token[row][t] for t in sorted(by_token[row])] if by_token[row]
            else merge_overlapping(e) if windows[row] > 1 else e
            for row, e in enumerate(found)
        ]
        return {"entities": pa.array(merged, pa.list_(ENTITY))}


    def _entities(
        self, probs: np.ndarray, offsets: np.ndarray, real: np.ndarray, subword: np.ndarray, text: str
    ) -> tuple[list[dict], np.ndarray | None]:
        """A window's entities and, with aggregation none, each one's token: its place among the window's tokens
        (special tokens left out); None for the other strategies, whose entities span tokens."""
        keep = real
        probs, offsets, subword = probs[keep], offsets[keep], subword[keep]
        strategy = self.options.aggregation_strategy
        if not len(probs):
            return [], (np.zeros(0, dtype=np.int64) if strategy == "none" else None)
        if strategy in ("none", "simple"):
            label, score, span = probs.argmax(1), probs.max(1), offsets
        else:
            label, score, span = self._words(probs, offsets, subword, strategy)
        tokens = None
        if strategy == "none":
            chosen = ~self.ignored[label]
            names, scores, spans = self.labels[label][chosen], score[chosen], span[chosen]
            tokens = np.flatnonzero(chosen)
        else:
            names, scores, spans = self._group(label, score, span)
        return [
            {"entity_group": str(name), "score": float(s), "word": text[a:b], "start": int(a), "end": int(b)}
            for name, s, (a, b) in zip(names, scores, spans)
        ], tokens

    @staticmethod
    def _words(probs: np.ndarray, offsets: np.ndarray, subword: np.ndarray, strategy: str):
        """Fuse tokens into words: each word's label id, score and character span."""
        starts_word = ~subword
        starts_word[0] = True
        first = np.flatnonzero(starts_word)
        word = np.cumsum(starts_word) - 1
        last = np.r_[first[1:], len(probs)] - 1
        if strategy == "first":
            word_probs = probs[first]
        elif strategy == "average":
            word_probs = np.add.reduceat(probs, first, axis=0) / np.diff(np.r_[first, len(probs)])[:, None]
        else:  # max: the word takes its most confident token's distribution
            confidence = probs.max(1)
            order = np.lexsort((-confidence, word))
            best_token = order[np.unique(word[order], return_index=True)[1]]
            word_probs = probs[best_token]
        span = np.stack([offsets[first, 0], offsets[last, 1]], axis=1)
        return word_probs.argmax(1), word_probs.max(1), span

    def _group(self, label: np.ndarray, score: np.ndarray, span: np.ndarray):
        """Adjacent units with the same tag and no B- in between form one entity; ignored labels are dropped."""
        tag = self.tags[label]
        new = np.ones(len(label), dtype=bool)
        new[1:] = self.begins[label[1:]] | (tag[1:] != tag[:-1])
        first = np.flatnonzero(new)
        last = np.r_[first[1:], len(label)] - 1
        mean = np.add.reduceat(score, first) / np.diff(np.r_[first, len(label)])
        group_span = np.stack([span[first, 0], span[last, 1]], axis=1)
        # HF drops a group whose tag (its label without B-/I-) is ignored, e.g. "O"
        dropped = np.isin(tag[first], self.options.ignore_labels)
        return tag[first][~dropped], mean[~dropped], group_span[~dropped]

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("entities", pa.list_(ENTITY))])
