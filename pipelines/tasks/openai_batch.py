"""The tasks that answer OpenAI Batch requests: chat completions and embeddings, each request with its own settings.

``ChatCompletions`` renders each request's messages through the model's chat template and
generates ``n`` choices per request. Rows of one micro-batch may ask for different
``temperature``, ``top_p``, ``seed``, ``max_tokens`` and ``stop``: every choice is one feature
carrying its own settings, and one ``model.generate`` call serves them all through two
per-row hooks: :class:`RowSampler` (temperature and top-p per row, with the model's ``top_k`` and
cutoffs, then the row's own Gumbel noise, as in :mod:`pipelines.tasks.generation`; temperature 0 is greedy) and
:class:`RowStop` (each row ends at its end-of-sequence token, its stop strings, found in the text
it generated and never in its prompt, or its ``max_tokens``, and remembers which). Sampling is
reproducible: a choice's noise depends on its request's ``seed`` (else the job's seed and the
``custom_id``), its index and the step, never on the rows batched beside it.

``Embeddings`` embeds each string of a request's ``input`` (one feature per string) and
gives the request its list of embeddings.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TopKLogitsWarper,
)

from pipelines.errors import PipelineError
from pipelines.inference.batching import Ragged
from pipelines.inference.loading import effective_max_length
from pipelines.tasks.base import NO_TOKENS, ROW_ID, Features, Outputs, Task, tokenless, vectors
from pipelines.tasks.feature_extraction import embed
from pipelines.tasks.generation import (
    RowEncoderPenalty,
    RowMinLength,
    encoder_penalty,
    eos_ids,
    generated_stops,
    own_prompt,
    row_seeds,
    sampling_warpers,
    seed_keys,
    uniform_noise,
)
from pipelines.tasks.openai_requests import ChatRequest, EmbeddingRequest, parse_request
from pipelines.tasks.options import FeatureExtractionOptions, TextGenerationOptions
from pipelines.tasks.prompts import RowText

#: Why a choice ended (``RowStop.reason``), and the finish_reason each is reported as.
OPEN, EOS, STOP, LENGTH = -1, 0, 1, 2
FINISH = {EOS: "stop", STOP: "stop", LENGTH: "length"}


# per-row generation settings ----------------------------------------------------------------


class RowSampler(LogitsProcessor):
    """Each row's temperature, the model's generation config's ``top_k`` and cutoffs (no request sets them) around
    each row's top-p, in Transformers' order (``sampling_warpers``), then its own Gumbel noise; rows with temperature
    0 stay greedy."""

    def __init__(
        self,
        keys: torch.Tensor,
        temperature: torch.Tensor,
        top_p: torch.Tensor,
        start: int,
        config: GenerationConfig | None = None,
    ) -> None:
        self.keys = keys
        self.sampled = temperature > 0
        self.temperature = torch.where(self.sampled, temperature, torch.ones_like(temperature))
        self.top_p = top_p
        self.start = start
        top_k = getattr(config, "top_k", None)
        self.warpers = sampling_warpers(
            config, keys.device, None, TopKLogitsWarper(top_k) if top_k else None, RowTopP(top_p)
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores / self.temperature[:, None].to(scores.dtype)
        warped = scores
        for warper in self.warpers:
            warped = warper(input_ids, warped)
        step = input_ids.shape[1] - self.start
        gumbel = -torch.log(-torch.log(uniform_noise(self.keys, step, scores.shape[1])))
        return torch.where(self.sampled[:, None], warped + gumbel.to(scores.dtype), scores)


class RowTopP(LogitsProcessor):
    """Each row's own top-p."""

    def __init__(self, top_p: torch.Tensor) -> None:
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return top_p_filter(scores, self.top_p) if bool((self.top_p < 1).any()) else scores


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep, per row, the most likely tokens holding ``top_p`` of the probability (at least one)."""
    ordered, index = torch.sort(scores, dim=-1, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)[:, None].to(cumulative.dtype)
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(1, index, remove), float("-inf"))


class RowStop(StoppingCriteria):
    """Ends each row at its own eos token, stop strings (in the text it generated, never in its prompt) or
    ``max_tokens``; keeps its length and why it ended."""

    def __init__(self, start: int, max_tokens: torch.Tensor, eos: list[int], stops: np.ndarray, tokenizer: Any) -> None:
        self.start = start
        self.max_tokens = max_tokens
        self.eos = torch.tensor(eos, dtype=torch.long, device=max_tokens.device)
        self.stops: list[tuple[str, ...]] = list(stops)
        self.tokenizer = tokenizer
        self.length = torch.full_like(max_tokens, -1)
        self.reason = torch.full_like(max_tokens, OPEN)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        step = input_ids.shape[1] - self.start
        still = self.reason == OPEN
        for reason, hit in ((EOS, torch.isin(input_ids[:, -1], self.eos)), (STOP, self._stopped(input_ids, still)),
                            (LENGTH, self.max_tokens <= step)):
            ended = still & hit
            self.reason[ended] = reason
            self.length[ended] = step
            still &= ~ended
        return self.reason != OPEN

    def _stopped(self, input_ids: torch.LongTensor, still: torch.Tensor) -> torch.Tensor:
        """Rows whose generated text holds one of their stop strings (only the rows still open are decoded)."""
        stops = [row if open_ else () for row, open_ in zip(self.stops, still.tolist())]
        return generated_stops(self.tokenizer, input_ids, self.start, stops).to(still.device)


def generate_rows(
    model: torch.nn.Module, tokenizer: Any, inputs: dict[str, torch.Tensor], extra: dict[str, np.ndarray]
) -> dict[str, Any]:
    """One ``model.generate`` over rows with their own settings: each row's tokens (eos kept) and why it ended."""
    device = inputs["input_ids"].device
    start = inputs["input_ids"].shape[1]

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(extra[name])).to(device)

    sampler = RowSampler(tensor("key"), tensor("temperature"), tensor("top_p"), start, model.generation_config)
    eos = eos_ids(model, tokenizer)
    stopper = RowStop(start, tensor("max_tokens"), eos, extra["stop"], tokenizer)
    processors: list[LogitsProcessor] = [sampler]
    min_length = getattr(model.generation_config, "min_length", None) or 0
    if min_length > 0 and eos:  # the model's min_length counts each row's own prompt, not its padding
        processors.insert(0, RowMinLength(min_length, eos, inputs["attention_mask"].sum(dim=1), start))
    penalty = encoder_penalty(model)
    if penalty is not None:  # the model's encoder_repetition_penalty favours each row's own prompt, not its padding
        processors.insert(0, RowEncoderPenalty(penalty, own_prompt(inputs["input_ids"], inputs["attention_mask"])))
    sequences = model.generate(
        **inputs,
        max_new_tokens=int(extra["max_tokens"].max()),
        do_sample=False,
        num_beams=1,
        min_length=0,
        encoder_repetition_penalty=1.0,
        stop_strings=None,  # the config's are the stops of requests that give none (ChatCompletions.setup)
        logits_processor=LogitsProcessorList(processors),
        stopping_criteria=StoppingCriteriaList([stopper]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos or None,
        # sampling is RowSampler's (the config's top_k and cutoffs included); the config's other processing
        # (repetition_penalty, no_repeat_ngram_size, ...) is model.generate's, each row's padding left out
        temperature=None,
        top_k=None,
        top_p=None,
    )
    generated = sequences[:, start:].cpu().numpy()
    length = stopper.length.cpu().numpy()
    length[length < 0] = generated.shape[1]
    tokens = [generated[i, : length[i]] for i in range(len(generated))]
    return {"tokens": tokens, "reason": stopper.reason.cpu().numpy()}


# chat completions ---------------------------------------------------------------------------------


class ChatCompletions(Task):
    """``/v1/chat/completions``: ``n`` choices per request, each a feature with the request's own settings."""

    name = "text-generation"
    options_model = TextGenerationOptions
    model_class = "AutoModelForCausalLM"
    padding_side = "left"  # every prompt ends where generation starts
    options: TextGenerationOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not getattr(self.tokenizer, "chat_template", None):
            raise PipelineError(
                "/v1/chat/completions requests: this model's tokenizer has no chat template to render messages "
                "with; use a chat (instruct) model"
            )
        self.default_stops: tuple[str, ...] = ()  # the model's generation config's stop_strings (setup)
        self.row_text = RowText(self.tokenizer)  # a message's special-token text is read as text, as the API does

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        configured = getattr(model.generation_config, "stop_strings", None) or ()
        self.default_stops = (configured,) if isinstance(configured, str) else tuple(configured)

    def token_inputs(self) -> dict[str, str | None]:
        return {}  # a text is a request line: what its messages or inputs hold is the request's to check

    def planned_new_tokens(self, features: Features) -> np.ndarray | None:
        """Each choice's max_tokens (the request's own, else task.max_new_tokens or what the context leaves): a
        micro-batch generates the most of its choices' on every one, and the token budget counts it, as
        text-generation's footprint counts max_new_tokens."""
        return features.extra["max_tokens"] if "max_tokens" in features.extra else None

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        errors: dict[int, str] = {}
        requests: dict[int, ChatRequest] = {}
        prompts: dict[int, str] = {}
        for i, text in enumerate(texts):
            request = parse_request(text, self.name)
            if not isinstance(request, ChatRequest):
                errors[i] = str(request)
                continue
            prompt, problem = self._render(request)
            if prompt is None:
                errors[i] = str(problem)
            else:
                requests[i], prompts[i] = request, prompt
        encoded = self.row_text.encode(list(prompts.values()), add_special_tokens=False) if prompts else []
        ids = columns.get(ROW_ID) or [str(i) for i in range(len(texts))]
        choices = _Choices()
        for (i, request), tokens in zip(requests.items(), encoded):
            new = self._max_tokens(request, len(tokens))
            problem = self._too_long(len(tokens), new, "max_completion_tokens" if request.max_completion_tokens
                                     else "max_tokens")
            if problem:
                errors[i] = problem
                continue
            choices.add(i, tokens, request, self._seed(request, ids[i]), new, self.default_stops)
        features = choices.features()
        features.errors = errors
        return features

    def _render(self, request: ChatRequest) -> tuple[str | None, str | None]:
        """(the request's messages through the chat template, None), or (None, why they can't be rendered)."""
        conversation = request.conversation()
        if isinstance(conversation, str):
            return None, conversation
        conversation = [{**turn, "content": self.row_text.hide(turn["content"])} for turn in conversation]
        try:
            return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False), None
        except Exception as exc:  # noqa: BLE001 - a template that raises (e.g. roles must alternate) refuses the row
            return None, f"the model's chat template refused the messages: {str(exc).strip()[:200]}"

    def _max_tokens(self, request: ChatRequest, prompt: int) -> int:
        """Most tokens to generate per choice: the request's max_tokens; where it gives none, task.max_new_tokens, or
        what the model's context leaves after the prompt where that is fewer (the API answers such a request up to
        its context; a max_tokens given that does not fit is refused, as the API refuses it)."""
        if request.max_completion_tokens or request.max_tokens:
            return request.new_tokens(self.options.max_new_tokens)
        room = self.positions - prompt if self.positions else self.options.max_new_tokens
        return max(1, min(self.options.max_new_tokens, room))  # no room at all: refused by _too_long

    def _too_long(self, prompt: int, new: int, field: str = "max_tokens") -> str | None:
        """Why a prompt of ``prompt`` tokens with ``new`` to generate can't be answered, or None. The reason's kind,
        its text before the first ``:``, is the same for every request (the summary counts refusals by kind); the
        lengths and what to change come after it (``field``: the request's field to lower, as it named it)."""
        if prompt > self.max_length:
            kind = f"prompt longer than batching.max_length: {prompt} tokens, over {self.max_length}"
            most = self._most_read()
            if most is not None and self.max_length >= most:  # batching.max_length was capped to the model's
                return f"{kind}, the most this model reads; messages are never cut: shorten them"
            room = f" (this model reads up to {most} tokens)" if most is not None else ""
            return f"{kind}; messages are never cut: raise batching.max_length{room}"
        if self.positions and prompt >= self.positions:  # only where batching.max_length is all the model reads
            return (
                f"prompt and max_tokens exceed the model's context: {prompt} tokens, its whole context of "
                f"{self.positions}, leave no room for an answer: shorten the messages"
            )
        if self.positions and prompt + new > self.positions:
            return (
                f"prompt and max_tokens exceed the model's context: {prompt} and {new} tokens, over {self.positions}; "
                f"give a {field} of at most {self.positions - prompt}"
            )
        return None

    def _most_read(self) -> int | None:
        """The most tokens this model reads, as batching.max_length is capped (its positions, its tokenizer's
        model_max_length: :func:`effective_max_length`); None when neither says."""
        most = effective_max_length(self.tokenizer, self.config, sys.maxsize)
        return most if most < sys.maxsize else None

    def _seed(self, request: ChatRequest, row_id: str) -> int:
        """The request's seed, else one from the job's seed and the custom_id (as a 63-bit row seed)."""
        if request.seed is not None:
            return int(row_seeds(request.seed, ["openai-seed"])[0])
        return int(row_seeds(self.seed, [row_id])[0])

    def forward(self, model, inputs, extra):
        keys = choice_keys(extra["seed"], extra["choice"])  # torch: on the model's thread, not in encode
        return generate_rows(model, self.tokenizer, inputs, {**extra, "key": keys})

    def new_tokens(self, outputs: Outputs) -> np.ndarray:
        return np.asarray([len(t) for t in outputs.listed("tokens")], dtype=np.int64)  # eos included, as usage

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        tokens = outputs.listed("tokens")
        reasons = outputs.stacked("reason")
        texts = self.tokenizer.batch_decode(
            [(t[:-1] if r == EOS else t).tolist() for t, r in zip(tokens, reasons)], skip_special_tokens=True
        )
        per_row: dict[str, list[Any]] = {name: [[] for _ in range(n_rows)] for name in ("text", "tokens", "finish")}
        for i, row in enumerate(features.row):
            text, finish = _cut(texts[i], features.extra["stop"][i], FINISH[int(reasons[i])])
            per_row["text"][row].append(text)
            per_row["tokens"][row].append(len(tokens[i]))
            per_row["finish"][row].append(finish)
        prompt = np.zeros(n_rows, dtype=np.int32)
        prompt[features.row] = features.lengths
        return {
            "generated_text": pa.array(per_row["text"], pa.list_(pa.string())),
            "prompt_tokens": pa.array(prompt, pa.int32()),
            "generated_tokens": pa.array(per_row["tokens"], pa.list_(pa.int32())),
            "finish_reason": pa.array(per_row["finish"], pa.list_(pa.string())),
        }

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("generated_text", pa.list_(pa.string())),
                pa.field("prompt_tokens", pa.int32()),
                pa.field("generated_tokens", pa.list_(pa.int32())),
                pa.field("finish_reason", pa.list_(pa.string())),
            ]
        )


def choice_keys(seeds: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """Each feature's sampling key: from its seed, in the noise stream of its choice index."""
    keys = torch.zeros(len(seeds), dtype=torch.int64)
    for choice in np.unique(choices).tolist():  # one noise stream per choice index
        picked = np.flatnonzero(choices == choice)
        keys[torch.from_numpy(picked)] = seed_keys(torch.from_numpy(np.ascontiguousarray(seeds[picked])), choice)
    return keys.numpy()


class _Choices:
    """Features of a batch of chat requests: one per choice, in (row, choice) order, with its settings."""

    def __init__(self) -> None:
        self.tokens: list[list[int]] = []
        self.columns: dict[str, list[Any]] = {
            name: [] for name in ("row", "choice", "seed", "temperature", "top_p", "max_tokens", "stop")
        }

    def add(
        self, row: int, tokens: list[int], request: ChatRequest, seed: int, max_tokens: int, stops: tuple[str, ...]
    ) -> None:
        """``max_tokens`` per choice (``ChatCompletions._max_tokens``), and ``stops`` (the model's stop strings)
        where the request gives no ``stop`` (an empty list is no stop strings, as in the API)."""
        own = stops if request.stop is None else request.stops()
        for choice in range(request.n):
            self.tokens.append(tokens)
            values = (row, choice, seed, request.temperature, request.top_p, max_tokens, own)
            for name, value in zip(self.columns, values):
                self.columns[name].append(value)

    def features(self) -> Features:
        column = {name: np.asarray(values) for name, values in self.columns.items() if name != "stop"}
        stops = np.empty(len(self.tokens), dtype=object)  # a tuple of stop strings per feature
        for i, group in enumerate(self.columns["stop"]):
            stops[i] = group
        extra = {
            "seed": column["seed"].astype(np.int64),  # the sampling keys are made from it in the forward
            "temperature": column["temperature"].astype(np.float64),
            "top_p": column["top_p"].astype(np.float64),
            "max_tokens": column["max_tokens"].astype(np.int64),
            "stop": stops,
            "choice": column["choice"].astype(np.int64),
        }
        return Features(
            tokens={"input_ids": Ragged.from_lists(self.tokens)}, row=column["row"].astype(np.int64), extra=extra
        )


def _cut(text: str, stops: tuple[str, ...], finish: str) -> tuple[str, str]:
    """The text up to the first of its stop strings (left out, as the API does), and the finish reason."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return (text[: min(found)], "stop") if found else (text, finish)


# embeddings ---------------------------------------------------------------------------------------


def _no_tokens(request: EmbeddingRequest, index: int) -> str:
    """Why the input at ``index``, in which the tokenizer finds no token, is refused: named by its place (none for a
    single string), and as white space where it holds only that (the API embeds it; this tokenizer drops it)."""
    where = "" if isinstance(request.input, str) else f"[{index}]"
    if not request.texts()[index].strip():
        return f"input{where} has no tokens (only white space, which the tokenizer drops)"
    return f"input{where} {NO_TOKENS}"


class Embeddings(Task):
    """``/v1/embeddings``: one feature per input string; each request gets its list of embeddings."""

    name = "feature-extraction"
    options_model = FeatureExtractionOptions
    model_class = "AutoModel"
    tokenizer_in_forward = False
    options: FeatureExtractionOptions

    def token_inputs(self) -> dict[str, str | None]:
        return {}  # a text is a request line: what its messages or inputs hold is the request's to check

    def encode(self, texts: list[str], columns: dict[str, list[Any]]) -> Features:
        errors: dict[int, str] = {}
        rows: list[int] = []
        strings: list[str] = []
        single: set[int] = set()  # rows whose input is one string, not a list (a cut one is named "input")
        width = self.config.hidden_size
        for i, text in enumerate(texts):
            request = parse_request(text, self.name)
            if isinstance(request, str):
                errors[i] = request
            elif not isinstance(request, EmbeddingRequest):
                errors[i] = "not an embeddings request"
            elif request.dimensions not in (None, width):
                errors[i] = (  # the size asked after the kind, as any value out of range: one kind however many
                    f"dimensions: this model's embeddings have {width}; give {width} or none (got {request.dimensions})"
                )
            elif empty := tokenless(self.tokenizer, request.texts()):  # the model would embed its special tokens
                errors[i] = _no_tokens(request, empty[0])
            else:
                rows += [i] * len(request.texts())
                strings += request.texts()
                if isinstance(request.input, str):
                    single.add(i)
        if not strings:
            return Features(tokens={}, row=np.zeros(0, np.int64), errors=errors)
        encoding = self.tokenize(strings)
        features = Features.one_per_row(encoding)
        features.row = np.asarray(rows, dtype=np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        if encoding["truncated"] is not None:
            cut = np.flatnonzero(encoding["truncated"])
            truncated[features.row[cut]] = True
            places = cut - np.searchsorted(features.row, features.row[cut])  # each cut input's place in its request
            for row, place in zip(features.row[cut].tolist(), places.tolist()):
                features.cut_where.setdefault(row, "input" if row in single else f"input[{place}]")
        features.truncated = truncated
        features.errors = errors
        return features

    def forward(self, model, inputs, extra):
        return {"embedding": embed(model, inputs, self.options.pooling, self.options.normalize).cpu().numpy()}

    def postprocess(self, outputs: Outputs, features: Features, n_rows: int) -> dict[str, pa.Array]:
        counts = np.bincount(features.row, minlength=n_rows)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        embeddings = pa.ListArray.from_arrays(pa.array(offsets), vectors(outputs.stacked("embedding")))
        tokens = np.bincount(features.row, weights=features.lengths, minlength=n_rows).astype(np.int32)
        return {"embeddings": embeddings, "prompt_tokens": pa.array(tokens, pa.int32())}

    def output_schema(self) -> pa.Schema:
        width = self.config.hidden_size
        return pa.schema(
            [pa.field("embeddings", pa.list_(pa.list_(pa.float32(), width))), pa.field("prompt_tokens", pa.int32())]
        )
