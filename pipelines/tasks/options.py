"""Every task's options: the ``task:`` section of a job spec, validated, with no model code (no torch).

Each options class names its task in ``type`` and declares what the job needs to
know before any model is loaded: the prediction columns it adds
(:meth:`TaskOptions.output_names`) and the input columns it reads besides the
text column (:meth:`TaskOptions.input_columns`). The spec, the CLI and the Ray
read and write tasks import this module alone; the implementations in the
other modules of this folder are loaded only where a model runs.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.values import number_problem


class TaskOptions(BaseModel):
    """Base of each task's options; ``type`` names the task in the job spec."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _as_written(cls, data: Any) -> Any:
        """A YAML boolean or a number that is not finite where a number is wanted is refused
        (:func:`pipelines.values.number_problem`): pydantic took ``max_new_tokens: yes`` for 1. (A model validator:
        a field one may not run on ``type``, the discriminator.)"""
        for name, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(name)
            problem = number_problem(field.annotation, value) if field is not None else None
            if problem:
                raise ValueError(f"{name}: {problem}")
        return data

    #: The task's ``forward`` reads only its inputs and what ``setup`` prepared, so several micro-batches may run at
    #: once, each in its own thread (``compute.cpu_lanes``). The generation tasks leave it off (not measured yet).
    independent_forwards: ClassVar[bool] = False
    type: str

    def output_names(self) -> list[str]:
        """Names of the prediction columns (known before any model is loaded)."""
        raise NotImplementedError

    def input_columns(self) -> list[str]:
        """Row columns besides the text column that the task reads."""
        return []


class LabelOptions(TaskOptions):
    """Options of a task that picks one label per row."""

    return_all_scores: bool = False

    def output_names(self) -> list[str]:
        return ["label", "score"] + (["scores"] if self.return_all_scores else [])


# prompts (decoder models) -------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The column names a template uses, in order of first use; only plain ``{name}`` fields."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"prompt_template is not a valid template ({exc}); write literal braces as {{{{ and }}}}"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"prompt_template field {{{name}}}: use plain column names like {{text}} or {{title}} "
                "(no positions, attributes, formats or conversions)"
            )
        if name not in names:
            names.append(name)
    return names


def template_columns(template: str) -> list[str]:
    """Row columns besides the text column that a template reads."""
    return [name for name in template_fields(template) if name != "text"]


class PromptOptions(TaskOptions):
    prompt_template: str = Field(
        default="{text}", description="The prompt; {text} is the text column, {name} any other input column."
    )
    chat: bool = Field(default=False, description="Wrap the prompt as a user message in the model's chat template.")
    system_prompt: str | None = Field(default=None, description="With chat: a system message before the prompt.")

    @field_validator("prompt_template")
    @classmethod
    def _fields_are_names(cls, template: str) -> str:
        template_fields(template)
        return template

    def input_columns(self) -> list[str]:
        return template_columns(self.prompt_template)

    def rows_differ_without_input(self) -> bool:
        """Whether rows of one prompt still get outputs of their own (a generating task's per-row samples)."""
        return False

    @model_validator(mode="after")
    def _reads_a_column(self) -> PromptOptions:
        fixed_prompt(self.prompt_template, self.type, self.rows_differ_without_input())
        return self

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self) -> PromptOptions:
        # the system turn is the chat template's: without it the instructions would be dropped without a word
        if self.system_prompt and not self.chat:
            raise ValueError(
                "task.system_prompt is given but task.chat is false, so the model would never read it (a system "
                "turn exists only in the model's chat template); set chat: true to send it as the chat's system "
                "message, or write the instruction into task.prompt_template and remove system_prompt"
            )
        return self


#: A field in another template language's braces ({{text}}, {{ text }}: Jinja, Mustache, LangChain's Jinja mode),
#: which str.format writes as the literal text {text}.
DOUBLED_FIELD = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


def fixed_prompt(template: str, task: str, rows_differ: bool) -> None:
    """Refuse a template that reads no column: every row would get the same prompt, the rows' own text read but
    never given to the model (the same label, or the same text, on every row; a sampling task's rows still draw
    their own samples of it, a use of its own, but not where the template writes {{text}}, a field meant)."""
    if template_fields(template):
        return
    doubled = DOUBLED_FIELD.search(template)
    if rows_differ and doubled is None:
        return
    output = "label" if task == "llm-label" else "text"
    same = "" if rows_differ else f" and the same {output}"
    hint = "write {text} where the text column goes, or {name} for another input column"
    if doubled is not None:
        hint += (
            f" ({doubled.group(0)} is the literal text {{{doubled.group(1)}}}: the template is filled as Python's "
            "str.format fills it, single braces around a column's name, double braces for a literal brace)"
        )
    elif "%s" in template:
        hint += " (%s is no field: the template is filled as Python's str.format fills it)"
    raise ValueError(
        f"task.prompt_template {template!r} reads no input column, so every row would get the same prompt{same}: "
        f"the rows' text would never reach the model; {hint}"
    )


#: The generation options a spec may leave out for the model's generation config to set, and the value each has
#: where neither sets it (what ``model.generate`` does then; top_k: none, not Transformers' 50). Spec hashes count
#: a left-out value as this one: outputs written before these options followed the model keep their hash.
CONFIG_DEFAULTS: dict[str, float | int | None] = {
    "temperature": 1.0,
    "top_k": None,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}


#: The tasks whose options are ``GenerationOptions``.
GENERATION_TASKS = ("text-generation", "summarization", "translation")


def left_out_differences(recorded: dict[str, Any], task: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    """The options of ``CONFIG_DEFAULTS`` that an output (``recorded``: its spec's task, as JSON) was decoded with
    otherwise than ``task`` would decode, though the spec hash is the same: one of them leaves the option to the
    model's generation config (``configured``), which sets another value than the other writes out (a left-out option
    hashes as the value it had before it followed the model). Each in words, with what to write to resume."""
    if task.get("type") not in GENERATION_TASKS:
        return []
    found = []
    for name in CONFIG_DEFAULTS:
        if name != "repetition_penalty" and not task.get("do_sample"):
            continue  # temperature, top-k, top-p: not used by greedy or beam search
        here, there = task.get(name), recorded.get(name)
        model = configured.get(name)
        if (here is None) == (there is None) or model is None or model == (there if here is None else here):
            continue  # both written out (the hash compared them), both left to the model, or the same value
        if here is not None:
            found.append(f"task.{name} is {here} here and the model's {model} in the output (left out there); "
                         f"leave task.{name} out to resume")
        else:
            found.append(f"task.{name} is the model's {model} here (left out) and {there} in the output; "
                         f"set task.{name}: {there} to resume")
    return found


class GenerationOptions(TaskOptions):
    """Decoding settings shared by every generating task."""

    text_output: ClassVar[str] = "generated_text"

    max_new_tokens: int = Field(default=64, gt=0, description="Most tokens generated per row (and per sequence).")
    do_sample: bool = Field(
        default=False, description="Sample (reproducibly, from the job seed and row id) instead of greedy/beam search."
    )
    # None: the model's generation config's value, else no change (as model.generate); see ``CONFIG_DEFAULTS``
    temperature: float | None = Field(
        default=None, gt=0, description="Sampling: divide logits by this (default: the model's, else 1.0)."
    )
    top_k: int | None = Field(
        default=None, ge=0, description="Sampling: keep only the k most likely tokens (0: all; default: the model's)."
    )
    top_p: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Sampling: keep the smallest set of tokens with this much probability (default: the model's, "
        "else 1.0).",
    )
    num_beams: int = Field(default=1, gt=0, description="Beam search width (greedy when 1); not with do_sample.")
    num_return_sequences: int = Field(default=1, gt=0, description="Sequences per row: samples, or the best beams.")
    repetition_penalty: float | None = Field(
        default=None, gt=0, description="Above 1 discourages repeating tokens (default: the model's, else 1.0)."
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Stop strings: a sequence ends where its text first contains one; the text is cut before it.",
    )

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature_zero(cls, value: Any) -> Any:
        # OpenAI's API reads temperature 0 as greedy; here greedy is do_sample: false, which uses no temperature
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            raise ValueError(
                "temperature 0: greedy decoding is the default (do_sample: false), which uses no temperature; remove "
                "task.temperature for it, or give a temperature above 0 (e.g. 0.7) with do_sample: true to sample"
            )
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        # one string is one stop string, as OpenAI's API and this project's own Batch requests take it
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stops: list[str]) -> list[str]:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @model_validator(mode="after")
    def _decoding(self) -> GenerationOptions:
        if self.do_sample and self.num_beams > 1:
            raise ValueError(
                "do_sample with num_beams > 1 is not supported: "
                "sample with num_beams: 1, or search beams without sampling"
            )
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) needs do_sample: true, "
                f"or num_beams >= num_return_sequences (got num_beams {self.num_beams})"
            )
        return self

    def output_names(self) -> list[str]:
        return [self.text_output, "prompt_tokens", "generated_tokens", "finish_reason"]


# the tasks ---------------------------------------------------------------------------------


class FeatureExtractionOptions(TaskOptions):
    independent_forwards = True
    type: Literal["feature-extraction"]
    pooling: Literal["mean", "cls", "last"] = "mean"
    normalize: bool = True

    def output_names(self) -> list[str]:
        return ["embedding"]


class TextClassificationOptions(LabelOptions):
    independent_forwards = True
    type: Literal["text-classification"]
    return_all_scores: bool = False
    function: Literal["auto", "softmax", "sigmoid", "none"] = "auto"


#: How DuckDB compares names: ASCII letters in any case (and the Kelvin sign as K); other letters as written.
DUCKDB_CASE = str.maketrans({**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}, "\u212a": "k"})


def distinct_labels(labels: list[str]) -> list[str]:
    """Labels are the fields of the output's ``scores`` struct: a name twice is refused by Polars, read as one by
    pandas and renamed by DuckDB, which also renames a name that differs from another in ASCII case only."""
    seen: dict[str, str] = {}
    for label in labels:
        key = label.translate(DUCKDB_CASE)
        if key in seen:
            twice = "twice" if seen[key] == label else f"beside {seen[key]!r}"
            raise ValueError(
                f"candidate_labels must be distinct, also in case: {label!r} {twice} (the labels name the fields of "
                "the output's scores, and DuckDB reads A-Z and a-z in names as one)"
            )
        seen[key] = label
    return labels


def hypothesis_fields(template: str) -> None:
    """Refuse a zero-shot hypothesis template that is not one ``{}`` (filled with the label by ``str.format``) among
    literal text: a second field (``{} or {}``, ``{labels}``) made every actor fail on an IndexError or KeyError,
    and ``{{}}``, a literal ``{}``, put no label in any hypothesis."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError:
        fields = []
    if fields != [("", "", None)]:
        raise ValueError(
            f"task.hypothesis_template {template!r} must hold {{}} once, where the label goes, and no other field "
            "(e.g. 'This example is {}.'); write a literal brace as {{ and }}"
        )


class ZeroShotOptions(LabelOptions):
    independent_forwards = True
    type: Literal["zero-shot-classification"]
    candidate_labels: list[str] = Field(min_length=1)
    hypothesis_template: str = "This example is {}."
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="embedding method: text to embed for a label instead of the template."
    )
    multi_label: bool = False
    method: Literal["auto", "nli", "embedding"] = "auto"
    temperature: float = Field(default=0.05, gt=0, description="embedding method: softmax temperature.")
    return_all_scores: bool = True

    @field_validator("candidate_labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() for label in labels):  # a hypothesis without a label, a scores field without a name
            raise ValueError("candidate_labels must not be empty: give each label its words")
        return distinct_labels(labels)

    @model_validator(mode="after")
    def _check(self) -> ZeroShotOptions:
        hypothesis_fields(self.hypothesis_template)
        unknown = set(self.label_descriptions) - set(self.candidate_labels)
        if unknown:
            raise ValueError(f"label_descriptions for labels not in candidate_labels: {sorted(unknown)}")
        blank = sorted(label for label, text in self.label_descriptions.items() if not text.strip())
        if blank:  # taken as no description: the label's filled template would stand in for it, unsaid
            raise ValueError(f"label_descriptions of {blank} are empty: give each its text, or leave the label out of "
                             "label_descriptions to use hypothesis_template")
        return self


class LLMLabelOptions(PromptOptions, LabelOptions):
    independent_forwards = True  # each micro-batch starts its own rows from the shared prefix's cache
    type: Literal["llm-label"]
    candidate_labels: list[str] = Field(min_length=2, description="The labels, as the model should write them.")
    prompt_template: str = Field(
        default="{text}\nAnswer:", description="The prompt each label continues; {text} is the text column."
    )
    label_prefix: str | None = Field(
        default=None,
        description="Text between prompt and label; default a space (none with chat or after a trailing space).",
    )
    normalize: Literal["sum", "mean"] = Field(
        default="mean", description="Rank labels by total or per-token log-likelihood."
    )
    reuse_prefix: bool = Field(
        default=True,
        description="Run the prompt part every row shares once per actor, and each row's prompt once for all "
        "its labels (false: one full forward per row and label).",
    )
    return_all_scores: bool = True

    @field_validator("candidate_labels", mode="before")
    @classmethod
    def _two_or_more(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) < 2:
            raise ValueError(
                f"llm-label picks the likeliest of two or more labels, {len(value)} given (one would win every row): "
                "name each answer the model may give, e.g. [yes, no]"
            )
        return value

    @field_validator("candidate_labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        distinct_labels(labels)
        if any(not label.strip() for label in labels):
            raise ValueError("candidate_labels must not be empty")
        return labels


class TextGenerationOptions(GenerationOptions, PromptOptions):
    type: Literal["text-generation"]

    def rows_differ_without_input(self) -> bool:
        return self.do_sample


class Seq2SeqOptions(GenerationOptions):
    prefix: str | None = Field(
        default=None, description="Text put before each row; default: the model config's task prefix, else none."
    )


class SummarizationOptions(Seq2SeqOptions):
    type: Literal["summarization"]
    text_output: ClassVar[str] = "summary_text"


class TranslationOptions(Seq2SeqOptions):
    type: Literal["translation"]
    text_output: ClassVar[str] = "translation_text"
    source_lang: str | None = Field(default=None, description="e.g. en; with target_lang picks the config's prefix.")
    target_lang: str | None = Field(default=None, description="e.g. de")


class QuestionAnsweringOptions(TaskOptions):
    independent_forwards = True
    type: Literal["question-answering"]
    question_column: str = Field(default="question", description="The column holding each row's question.")
    context_column: str = Field(default="context", description="The column holding the text to answer from.")
    doc_stride: int = Field(default=128, gt=0, description="Tokens of overlap between windows of a long context.")
    max_answer_length: int = Field(default=15, gt=0, description="Longest answer, in tokens.")
    max_question_length: int = Field(default=64, gt=0, description="Longer questions are row errors.")
    top_k: int = Field(default=1, gt=0, description="Answers per row; above 1 they are listed in `answers`.")
    handle_impossible_answer: bool = Field(
        default=False, description="Allow the empty answer (SQuAD2-style models): it wins when [CLS] scores higher."
    )
    align_to_words: bool = Field(default=True, description="Widen an answer to whole words, as the pipeline does.")

    def output_names(self) -> list[str]:
        return ["answer", "score", "start", "end"] + (["answers"] if self.top_k > 1 else [])

    def input_columns(self) -> list[str]:
        return list(dict.fromkeys([self.question_column, self.context_column]))

    def no_room(self, max_length: int, specials: int = 0, cap: str = "") -> str | None:
        """Why a window of ``max_length`` tokens, ``specials`` of them the tokenizer's, can't hold the longest question
        and at least 2 tokens of context (or None where it can). ``cap``: where ``max_length`` is the model's own
        limit, what says so (``Task.cap_note``): raising ``batching.max_length`` then does not help."""
        if max_length - specials - self.max_question_length >= 2:
            return None
        limit = f"max_length {max_length}{cap}," if cap else f"batching.max_length {max_length}"
        added = f" and the {specials} special tokens the tokenizer adds" if specials else ""
        fix = "lower task.max_question_length" if cap else "raise batching.max_length or lower task.max_question_length"
        return (f"question-answering: {limit} leaves no room for the context after a question of up to "
                f"task.max_question_length {self.max_question_length} tokens{added}; {fix}")


class TokenClassificationOptions(TaskOptions):
    independent_forwards = True
    type: Literal["token-classification"]
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = Field(
        default="simple", description="How token labels become entities (see the Transformers pipeline)."
    )
    ignore_labels: list[str] = Field(default_factory=lambda: ["O"], description="Labels that are not entities.")
    stride: int | None = Field(
        default=32,
        ge=0,
        description="Tokens of overlap between the windows of a text longer than max_length; null: truncate it.",
    )

    def output_names(self) -> list[str]:
        return ["entities"]


class FillMaskOptions(TaskOptions):
    independent_forwards = True
    type: Literal["fill-mask"]
    top_k: int = Field(default=5, gt=0, description="Candidates per mask token.")
    mask_placeholder: str | None = Field(
        default=None, description="A string in the texts that stands for the model's mask token, e.g. <mask>."
    )
    targets: list[str] | None = Field(
        default=None,
        description="Score only these tokens (a word not in the vocabulary: its first token).",
    )

    @field_validator("mask_placeholder")
    @classmethod
    def _placeholder_text(cls, placeholder: str | None) -> str | None:
        if placeholder == "":
            raise ValueError(
                "an empty placeholder marks no place, and every row would lack a mask: leave it out to find the "
                "model's own mask token, or give the text your rows hold, e.g. <mask>"
            )
        return placeholder

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, targets: list[str] | None) -> list[str] | None:
        if targets is not None and not targets:
            raise ValueError("an empty list ranks no token: leave task.targets out to rank the whole vocabulary")
        return targets

    def output_names(self) -> list[str]:
        return ["predictions"]


#: Every task's options by task name, in the order the README lists the tasks.
TASK_OPTIONS: dict[str, type[TaskOptions]] = {
    "feature-extraction": FeatureExtractionOptions,
    "text-classification": TextClassificationOptions,
    "zero-shot-classification": ZeroShotOptions,
    "llm-label": LLMLabelOptions,
    "text-generation": TextGenerationOptions,
    "summarization": SummarizationOptions,
    "translation": TranslationOptions,
    "question-answering": QuestionAnsweringOptions,
    "token-classification": TokenClassificationOptions,
    "fill-mask": FillMaskOptions,
}

AnyTaskOptions = Annotated[
    FeatureExtractionOptions
    | TextClassificationOptions
    | ZeroShotOptions
    | TextGenerationOptions
    | SummarizationOptions
    | TranslationOptions
    | QuestionAnsweringOptions
    | FillMaskOptions
    | TokenClassificationOptions
    | LLMLabelOptions,
    Field(discriminator="type"),
]
