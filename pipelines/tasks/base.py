"""What every task is: options, then encode → forward → postprocess, as in the Transformers pipelines.

A task turns a batch of rows into *features* (token sequences; usually one per
row, several where a row fans out: one per candidate label, one per context
window), runs the model on a padded micro-batch of features, and folds the
features' outputs back into one prediction per row as Arrow columns.

A task knows nothing about Ray, batching or devices: the predictor decides
which features go together (under a token budget counted in the task's
``footprint``) and where tensors live; the task's ``forward`` may run several
model calls on a micro-batch, with per-actor state from ``setup``. What a task needs before
any model is loaded (its options, output columns, input columns) is in
:mod:`pipelines.tasks.options`; what is data here is declared, not computed:
the ``transformers`` Auto class that loads its model (``model_class``) and the
padding side.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch

from pipelines.inference.batching import Ragged
from pipelines.inference.loading import SCORE_BY_MASK, position_limit
from pipelines.tasks.options import LabelOptions, TaskOptions

# Key under which the predictor passes each row's id to ``Task.encode`` (in ``columns``), e.g. for per-row seeds.
ROW_ID = "_row_id"
#: The reason of a row whose input holds no token, after the input's name (``text``, or a column's).
NO_TOKENS = "has no tokens (only characters the tokenizer drops)"
#: A letter, digit or underscore: a string holding one holds a token for any tokenizer (an unknown one at worst).
WORD = re.compile(r"\w")
#: A character from U+0300 on, where the combining marks start: the only ones :class:`DroppedMarks` looks at.
FROM_COMBINING = re.compile("[^\x00-\u02ff]")


@dataclass
class Features:
    """Model inputs for a batch of rows: ``tokens`` are ragged, one entry per feature.

    ``row[i]`` is the row that feature ``i`` belongs to; ``extra`` holds per-feature
    arrays the task wants back in ``forward`` and ``postprocess``; ``truncated`` flags
    rows whose text was cut to ``max_length``, and ``cut_where`` names, for a row of several
    inputs, the first of them that was (``input[1]``: a row's too-long reason says it);
    ``errors`` maps a row (its index among the rows given to ``encode``) to the reason it
    can't be predicted: such a row needs no features, its predictions are null and the
    reason lands in ``_error``.
    """

    tokens: dict[str, Ragged]
    row: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    truncated: np.ndarray | None = None
    errors: dict[int, str] = field(default_factory=dict)
    cut_where: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.row)

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens["input_ids"].lengths

    @classmethod
    def one_per_row(cls, encoding: dict[str, list[list[int]]], truncated: np.ndarray | None = None) -> Features:
        names = [n for n in ("input_ids", "token_type_ids") if n in encoding]
        tokens: dict[str, Ragged] = {n: Ragged.from_lists(encoding[n]) for n in names}
        return cls(tokens=tokens, row=np.arange(len(tokens["input_ids"])), truncated=truncated)


class Outputs:
    """Forward outputs gathered micro-batch by micro-batch, read back in feature order."""

    def __init__(self, n_features: int) -> None:
        self.n = n_features
        self._parts: list[tuple[np.ndarray, dict[str, Any]]] = []

    def add(self, index: np.ndarray, values: dict[str, Any]) -> None:
        self._parts.append((index, values))

    def _order(self) -> np.ndarray:
        index = np.concatenate([i for i, _ in self._parts]) if self._parts else np.zeros(0, np.int64)
        return np.argsort(index, kind="stable")

    def stacked(self, name: str) -> np.ndarray:
        """Outputs with equal trailing shape, as one array ``[n_features, ...]``."""
        values = np.concatenate([np.asarray(v[name]) for _, v in self._parts])
        return values[self._order()]

    def listed(self, name: str) -> list[Any]:
        """Outputs of varying shape (per-token scores, generated ids), one item per feature."""
        items = [item for _, v in self._parts for item in v[name]]
        return [items[i] for i in self._order()]


class Task(ABC):
    """One batch task. Subclasses declare ``name``, ``options_model`` and ``model_class``, and implement the
    three steps."""

    name: ClassVar[str]
    options_model: ClassVar[type[TaskOptions]]
    #: The name of the ``transformers`` Auto class that loads the model, e.g. ``AutoModelForMaskedLM``.
    model_class: ClassVar[str]
    padding_side: Literal["right", "left"] = "right"  # a task may choose per instance, in ``setup``
    #: Whether ``forward`` uses the tokenizer (generation decodes to find its stop strings): then no other
    #: batch is tokenized while it runs, and tokenizing does not overlap the forwards. A task that never
    #: touches the tokenizer in ``forward`` says False.
    tokenizer_in_forward: ClassVar[bool] = True
    options: Any  # the task's own options class (``options_model``)

    def __init__(self, options: TaskOptions, tokenizer: Any, config: Any, max_length: int, seed: int = 0) -> None:
        self.options = options
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.seed = seed  # the job's seed, for tasks that sample

    @property
    def positions(self) -> int | None:
        """The model's context in tokens (``max_position_embeddings``, less RoBERTa's offset where the model numbers its
        positions so), where its config gives one."""
        return position_limit(self.config)

    @classmethod
    def model_class_for(cls, options: TaskOptions, config: Any) -> str:
        """The Auto class for these options and this model config (``model_class`` unless a task decides)."""
        return cls.model_class

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Once per actor, after the model is loaded: state every ``forward`` may use (embedded candidate
        labels, the KV cache of a prompt prefix all rows share). ``forward`` must leave that state as it found
        it: the predictor may run a micro-batch again in halves after a failure."""

    def plan_setup(self) -> None:
        """What :meth:`setup` prepares for ``encode``, without a model: ``pipelines plan`` loads no weights.
        Where ``setup`` would decide by the model (e.g. whether rows can continue a cached prefix), this
        assumes the usual case; the plan says its figures are for that case."""

    def footprint(self, width: int) -> int:
        """Tokens one feature padded to ``width`` holds while ``forward`` runs: the unit of the micro-batch token
        budget. More than ``width`` where ``forward`` adds tokens (a shared prefix's cache, generated tokens)."""
        return width

    def planned_new_tokens(self, features: Features) -> np.ndarray | None:
        """Tokens each feature may generate, where that differs from feature to feature (a chat request's own
        max_tokens): a micro-batch generates the most of its features' on every one of them, and the token budget
        counts that beside ``footprint``. None where ``footprint`` counts them already (the same for every feature)
        or the task generates none."""
        return None

    def micro_batch_fill(self, configured: float) -> float:
        """How much shorter than the longest a feature of a micro-batch may be (``batching.min_fill``); a task whose
        ``forward`` groups features by length itself may want them all together (0)."""
        return configured

    def padded_widths(self, lengths: np.ndarray) -> np.ndarray:
        """The padded width at which each feature of a micro-batch with these lengths is computed (for the
        padding efficiency): the longest, unless ``forward`` groups them by length."""
        return np.full(len(lengths), lengths.max() if len(lengths) else 0)

    def new_tokens(self, outputs: Outputs) -> np.ndarray | None:
        """Tokens each feature generated (for the run's generated tokens/s), or None for tasks that don't."""
        return None

    def too_long_reason(self, where: str = "text") -> str:
        """The reason of a row cut to fit, under ``errors.too_long: error``: ``where`` it was cut (the text, or the
        input of a request that holds several, :attr:`Features.cut_where`) and the limit it was cut at (the row's
        own length is not kept past the cut)."""
        return f"{where} longer than max_length (max_length is {self.max_length} tokens){self.cap_note()}"

    def cap_note(self) -> str:
        """Where ``max_length`` is the model's own cap (all its positions, its tokenizer's ``model_max_length``, below
        ``batching.max_length`` or equal to it), a too-long reason's last words saying so: a larger
        ``batching.max_length`` does not raise it, which the bare number let a user try; else nothing."""
        if self.max_length == self.positions:
            return ": all the model's positions (max_position_embeddings), which no setting raises"
        if self.max_length == getattr(self.tokenizer, "model_max_length", None):
            return ": the tokenizer's model_max_length, which a larger batching.max_length does not raise"
        return ""

    def token_inputs(self) -> dict[str, str | None]:
        """The row inputs the model reads as tokens, by the name a row error gives them: a column of ``columns``
        in :meth:`encode`, or None for the text column. A row where one of them holds no token at all is
        quarantined (:meth:`without_tokens`). A task whose text is no model input (a request) says none."""
        return {"text": None}

    def without_tokens(self, texts: list[str], columns: dict[str, list[Any]]) -> dict[int, str]:
        """Rows with a :meth:`token_inputs` input the tokenizer reads as no token at all (only characters it
        drops: zero-width, control or bidi characters, a byte order mark), with their reason. The model would
        read the empty input (its special tokens alone) and write a prediction for it."""
        errors: dict[int, str] = {}
        for name, column in self.token_inputs().items():
            for row in tokenless(self.tokenizer, texts if column is None else columns[column]):
                errors.setdefault(row, f"{name} {NO_TOKENS}")
        return errors

    @abstractmethod
    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        """Tokenize a batch of valid rows into features.

        ``columns`` holds the ``input_columns`` and, under ``ROW_ID``, the rows' ids
        (where the batch has an id column).
        """

    @abstractmethod
    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
        """Run one padded micro-batch; return per-feature outputs (first dimension = features).

        A task may run several model calls here (continue a cached prefix, score labels after a row's prompt,
        decode token by token), using what ``setup`` prepared.
        """

    @abstractmethod
    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        """Fold feature outputs into one value per row for each output column.

        Called only when there is at least one feature; rows in ``features.errors``
        may hold any value (the predictor nulls them).
        """

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """The prediction columns this task adds, with their Arrow types."""

    # helpers shared by tasks -------------------------------------------------------

    def tokenize(self, texts: list[str], pairs: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Tokenize without padding, truncated to ``max_length``; flags rows that were cut. A text far longer than
        ``max_length`` is handed to the tokenizer as its head (:meth:`heads`), with the same tokens, offsets and
        flag as the whole text."""
        if pairs is None and not kwargs.get("return_overflowing_tokens"):
            texts = self.heads(texts)
        encoding = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            **kwargs,
        )
        encoding["truncated"] = _truncated(encoding)
        if encoding["truncated"] is None and not kwargs.get("return_overflowing_tokens"):  # a slow tokenizer
            encoding["truncated"] = cut_by_length(self.tokenizer, self.max_length, texts, pairs, **kwargs)
        return encoding


    def heads(self, texts: list[str]) -> list[str]:
        """``texts``, each one longer than :data:`CHARS_PER_TOKEN` characters per token of ``max_length`` cut to
        its head where that head gives the same first tokens as the whole text.

        A fast tokenizer tokenizes a text whole before it truncates it: a 5 MB text cut to 128 tokens took 7.5 s
        and 1.3 GB. The head ends at a word's end (a character other than whitespace before a space: every tokenizer
        here splits words there, GPT-2's byte-level BPE putting the space before the next word; not before a
        newline, which Llama 3's and Qwen2's pre-tokenizers join to the punctuation before it, ``});\n``), and it is
        taken only where it holds more tokens than fit (the tokenizer cuts it too) and every token kept ends before
        the head's last word (the one word whose tokens could depend on what follows it), so that the tokens kept
        are the whole text's; else the text goes whole (a text whose head is mostly whitespace, or one with no
        space to cut at: CJK, one long word). Only where the tokenizer keeps a text's start (its
        ``truncation_side`` right) and says whether it cut it, and where (a fast tokenizer)."""
        budget = self.max_length * CHARS_PER_TOKEN
        if not getattr(self.tokenizer, "is_fast", False) or self.tokenizer.truncation_side != "right":
            return texts
        long = {i: head for i, text in enumerate(texts)
                if isinstance(text, str) and len(text) > budget and (head := word_head(text, budget))}
        if not long:
            return texts
        checked = self.tokenizer(list(long.values()), truncation=True, max_length=self.max_length, padding=False,
                                 return_offsets_mapping=True)
        if not getattr(checked, "encodings", None):
            return texts
        given = list(texts)
        for (i, head), encoding in zip(long.items(), checked.encodings):
            kept = [end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
            if encoding.overflowing and kept and max(kept) <= head.rfind(" ") + 1:
                given[i] = head  # more tokens than fit, every one kept from before the head's last word
        return given


#: Characters per token of ``max_length`` past which a text is tokenized from its head (:meth:`Task.heads`): 16, four
#: times the English average, so that a head nearly always holds more tokens than fit and the text is not tokenized
#: a second time, whole.
CHARS_PER_TOKEN = 16
#: A word's end: a character other than whitespace before a space.
WORD_END = re.compile(r"\S(?= )")


def word_head(text: str, budget: int) -> str | None:
    """``text`` up to its last word's end within ``budget`` characters, past half of them; None where none is."""
    last = None
    for last in WORD_END.finditer(text, budget // 2, budget):
        pass
    return text[: last.end()] if last is not None else None


def tokenless(tokenizer: Any, values: list[Any]) -> list[int]:
    """Indices of the non-empty strings of ``values`` in which the tokenizer finds no token (none added by it
    counted). Only a string with no letter, digit or underscore can be one (a tokenizer reads those as a token,
    an unknown one at worst): those alone are tokenized again, so the rows of real text cost one regex step."""
    suspects = [i for i, value in enumerate(values) if isinstance(value, str) and value and not WORD.search(value)]
    if not suspects:
        return []
    found = tokenizer([values[i] for i in suspects], add_special_tokens=False)["input_ids"]
    return [i for i, ids in zip(suspects, found) if not ids]


class DroppedMarks:
    """Span ends moved past the combining marks the tokenizer's normaliser drops.

    An uncased tokenizer (``strip_accents``: MiniLM, BERT uncased) drops combining marks (Unicode category Mn).
    In decomposed text (NFD: ``e`` + U+0301 for ``é``, as macOS file names and some PDF extractions hold it;
    Arabic vowel marks, Devanagari's anusvara and virama in any form) such a mark after a token's last letter
    belongs to no token, so the token's offsets, and an entity's or an answer's span taken from them, end before
    it: the letter cut in two (``Cafe`` of ``Café``). A mark the normaliser keeps is in a token, and stays where
    it is.
    """

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.normalizer = getattr(backend, "normalizer", None)
        self._dropped: dict[str, bool] = {}

    def dropped(self, char: str) -> bool:
        known = self._dropped.get(char)
        if known is None:
            known = self._dropped[char] = (
                self.normalizer is not None
                and unicodedata.category(char).startswith("M")
                and self.normalizer.normalize_str(char) == ""
            )
        return known

    def extend(self, text: str, offsets: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """``offsets`` (``[n, 2]``, characters of ``text``) with the ends of the flagged ``tokens`` moved past
        the dropped marks that follow them; the others (special tokens, another text's) as they are."""
        if self.normalizer is None:
            return offsets
        marks = [m.start() for m in FROM_COMBINING.finditer(text) if self.dropped(m.group())]
        if not marks:
            return offsets
        dropped = np.zeros(len(text) + 1, dtype=bool)  # the last stays False: no mark past the text's end
        dropped[marks] = True
        starts, ends = offsets[:, 0], np.minimum(offsets[:, 1], len(text))  # another text's may be longer
        moving = np.flatnonzero(tokens & (starts < ends) & dropped[ends])
        if not len(moving):
            return offsets
        offsets = offsets.copy()
        for t in moving:
            end = offsets[t, 1]
            while dropped[end]:
                end += 1
            offsets[t, 1] = end
        return offsets


def cut_by_length(tokenizer: Any, max_length: int, texts: list[str], pairs: list[str] | None = None,
                  **kwargs: Any) -> np.ndarray:
    """Which texts (with their ``pairs``) a tokenizer cuts at ``max_length``, told by their untruncated length: a slow
    (Python) tokenizer, such as MarianTokenizer, says nothing of the rows it cut (:func:`_truncated`). It tokenizes
    each text whole a second time, as it already did once before cutting it."""
    whole = tokenizer(texts, pairs, truncation=False, padding=False, **kwargs)["input_ids"]
    return np.fromiter((len(ids) > max_length for ids in whole), dtype=bool, count=len(whole))


def _truncated(encoding: Any) -> np.ndarray | None:
    encodings = getattr(encoding, "encodings", None)
    if not encodings:
        return None
    return np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def vectors(matrix: np.ndarray) -> pa.Array:
    """A float matrix ``[n, d]`` as Arrow ``fixed_size_list<float32>[d]`` (plain Parquet, readable everywhere)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


# picking one label per row ------------------------------------------------------------------


def label_names(config: Any) -> list[str]:
    """Class names in id order, from the model config (``LABEL_i`` where it has none)."""
    mapping = getattr(config, "id2label", None) or {}
    return [str(mapping.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def scores_struct(labels: list[str], scores: np.ndarray) -> pa.Array:
    """A ``struct<label: float32, ...>`` column: one field per class, in the model's order."""
    arrays = [pa.array(scores[:, i].astype(np.float32)) for i in range(len(labels))]
    return pa.StructArray.from_arrays(arrays, names=labels)


class LabelTask(Task):
    """A task that picks one of ``self.labels`` per row: ``label``, ``score``, optionally every ``scores``."""

    labels: list[str]
    options: LabelOptions

    def independent_scores(self) -> bool:
        """Whether each label's score is its own (a sigmoid per label, a raw output, one output), not its share of
        one distribution over the labels: then what a row says is its scores, which a user thresholds label by
        label, and not only which label is on top (what the fidelity check compares)."""
        return len(self.labels) == 1

    def label_columns(self, scores: np.ndarray) -> dict[str, pa.Array]:
        """The output columns from a ``[rows, labels]`` score matrix."""
        top = scores.argmax(axis=1)
        columns = {
            "label": pa.array(np.asarray(self.labels, dtype=object)[top], pa.string()),
            "score": pa.array(scores[np.arange(len(top)), top].astype(np.float32)),
        }
        if self.options.return_all_scores:
            columns["scores"] = scores_struct(self.labels, scores)
        return columns

    def output_schema(self) -> pa.Schema:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if self.options.return_all_scores:
            fields.append(pa.field("scores", pa.struct([pa.field(n, pa.float32()) for n in self.labels])))
        return pa.schema(fields)


def sequence_logits(model: Any, inputs: dict[str, Any]) -> Any:
    """A sequence classifier's logits. A decoder classifier (Llama, GPT-2, ...) scores each row at its last token
    that is not its config's pad token; where that pad token was lent by the tokenizer (the model had none, so
    the end-of-sequence token stands in), a text that ends in that token's text would be scored a token early, and
    where it is not the token the rows are padded with (the tokenizer's), a padded row would be scored at its
    padding: such a model is scored at each row's last token that the attention mask keeps, as a row alone would be
    (:data:`~pipelines.inference.loading.SCORE_BY_MASK`)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not getattr(config, SCORE_BY_MASK, False) or not hasattr(model, "score") or "attention_mask" not in inputs:
        return model(**inputs).logits
    hidden = getattr(model, model.base_model_prefix)(**inputs).last_hidden_state
    mask = inputs["attention_mask"]
    last = (torch.arange(mask.shape[-1], device=mask.device) * mask).argmax(-1)  # either padding side
    return model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
