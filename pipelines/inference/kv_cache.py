"""KV caches for tasks that run several forwards per micro-batch: a shared prefix computed once, rows continued.

A prompt prefix every row shares (few-shot examples, a system prompt, the chat
template's opening) is run once per actor (:class:`Prefix`); each micro-batch
starts from a copy of its keys and values. Rows then sit in the cache as

    [shared prefix | left padding | the row's own tokens | tokens added later]

with explicit position ids (the prefix at 0..P-1, a row's tokens right after it)
and an attention mask that hides the padding, and hides the prefix from rows that
do not start with it (a prompt cut by truncation). Each row therefore computes
what it would alone, up to float rounding, without its prefix being recomputed.
Rows can leave the cache (:meth:`Rows.keep`) or be repeated (one copy per
candidate label or per sample).

Only models whose cache is the plain :class:`~transformers.DynamicCache` with
full-attention layers qualify (:func:`supports_reuse`); :meth:`Prefix.verify`
also checks, on the real prefix, that a continued row gets the logits of a full
forward, so a model that ignores position ids or masks is caught at setup.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

log = logging.getLogger(__name__)

#: The largest difference between a continued row's logits and a full forward's that :meth:`Prefix.verify` accepts:
#: float32 agrees to ~1e-5 here; 16-bit weights round each computation differently (a model that ignores the
#: cache layout is off by whole units).
VERIFY_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
LOW_PRECISION_TOLERANCE = 0.25


def supports_reuse(model: torch.nn.Module) -> bool:
    """Whether the model takes a cache and position ids, and its cache is plain full attention (no sliding window)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    parameters = inspect.signature(model.forward).parameters
    if cache_argument(model) is None or not {"position_ids", "attention_mask"} <= set(parameters):
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config the cache can't read: no reuse
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def cache_argument(model: torch.nn.Module) -> str | None:
    """The name under which the model's forward takes a cache (``cache`` since transformers 5.x, before that
    ``past_key_values``), or None."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model can compute logits for the last positions only (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@dataclass
class Rows:
    """Rows in a cache: which cached positions each may attend to, and the position of its next token."""

    cache: DynamicCache
    mask: torch.Tensor  # [rows, cached tokens], 1 where the row attends
    next_position: torch.Tensor  # [rows]
    cache_argument: str = "cache"  # the forward's name for the cache
    keeps_logits: bool = False  # whether the forward takes logits_to_keep

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def keep(self, index: torch.Tensor, compact: bool = False) -> None:
        """Keep only the rows at ``index`` (in that order; an index may repeat, copying the row); with ``compact``
        also drop the cached positions none of them attends to, where they are many (positions are explicit, so
        nothing moves)."""
        mask = self.mask[index]
        columns = None
        if compact:
            used = mask.bool().any(dim=0)
            if int(used.sum()) <= 0.875 * len(used):  # worth a second copy: an eighth of the positions or more
                columns = torch.nonzero(used)[:, 0]
                mask = mask[:, columns]
        for layer in self.cache.layers:
            if isinstance(layer, ReservedLayer):
                layer.select(index, columns)
            else:
                layer.batch_select_indices(index)
                if columns is not None:
                    layer.keys, layer.values = layer.keys[:, :, columns], layer.values[:, :, columns]
        self.mask = mask
        self.next_position = self.next_position[index]

    def reserve(self, room: int) -> None:
        """Make room for ``room`` more positions in every layer, so that extending writes in place."""
        for i, layer in enumerate(self.cache.layers):
            if type(layer) is DynamicLayer and layer.is_initialized:
                self.cache.layers[i] = ReservedLayer(layer.keys, layer.values, room)

    def repeat(self, times: int) -> None:
        """Each row ``times`` times in a row (row ``i``'s copies at ``i * times .. i * times + times - 1``)."""
        if times > 1:
            self.keep(torch.arange(len(self), device=self.mask.device).repeat_interleave(times))

    def snapshot(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """What :meth:`restore` needs to undo later :meth:`extend` calls."""
        return int(self.mask.shape[1]), self.mask, self.next_position

    def restore(self, snapshot: tuple[int, torch.Tensor, torch.Tensor]) -> None:
        """Drop what was added since ``snapshot`` (same rows)."""
        length, self.mask, self.next_position = snapshot
        added = self.cache.get_seq_length() - length
        if added:
            self.cache.crop(-added)

    def extend(
        self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """Run ``ids`` (``[rows, n]``, padded either side, ``mask`` 1 on real tokens) after each row's cache.

        Returns the logits, ``[rows, n, vocab]``, or ``[rows, vocab]`` at the last column with ``last_only``
        (left-padded rows then all end there).
        """
        positions = self.next_position[:, None] + mask.cumsum(dim=1) - 1
        positions = positions.clamp(min=0)
        attention = torch.cat([self.mask, mask.to(self.mask.dtype)], dim=1)
        kwargs: dict[str, Any] = {self.cache_argument: self.cache}
        if last_only and self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        out = model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **kwargs,
        )
        self.mask = attention
        self.next_position = self.next_position + mask.sum(dim=1)
        return out.logits[:, -1] if last_only else out.logits


class ReservedLayer(DynamicLayer):
    """A full-attention cache layer with room for more positions: appending writes in place, where
    ``DynamicLayer`` copies the whole cache at every step; ``keys`` and ``values`` are views of the filled part."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        super().__init__()
        self.is_initialized = True
        self.device = keys.device
        self._fill(keys, values, room)

    def _fill(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        length = keys.shape[-2]
        self._keys = keys.new_empty((*keys.shape[:-2], length + room, keys.shape[-1]))
        self._values = values.new_empty((*values.shape[:-2], length + room, values.shape[-1]))
        self._keys[..., :length, :] = keys
        self._values[..., :length, :] = values
        self._length = length
        self._views()

    def _views(self) -> None:
        self.keys = self._keys[..., : self._length, :]
        self.values = self._values[..., : self._length, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        added = key_states.shape[-2]
        room = self._keys.shape[-2] - self._length
        if added > room:  # out of room: copy once into a buffer twice as roomy
            keys, values = torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)
            self._fill(keys, values, max(room, added) * 2)
        else:
            self._keys[..., self._length : self._length + added, :] = key_states
            self._values[..., self._length : self._length + added, :] = value_states
            self._length += added
            self._views()
        return self.keys, self.values

    def select(self, rows: torch.Tensor, columns: torch.Tensor | None = None) -> None:
        """Keep the rows at ``rows`` and, where given, the positions at ``columns``, with the same room."""
        self._keys, self._values = self._keys[rows], self._values[rows]  # one copy, room included
        if columns is not None:
            room = torch.arange(self._length, self._keys.shape[-2], device=columns.device)
            kept = torch.cat([columns, room])
            self._keys, self._values = self._keys[..., kept, :], self._values[..., kept, :]
            self._length = len(columns)
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.select(torch.arange(self.keys.shape[0], device=self.keys.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        self._length -= abs(tokens_to_remove)
        self._views()


def merge(parts: list[Rows], after: int) -> Rows:
    """The rows of several caches as one batch, part after part: each part's cache (and mask) is widened to the
    longest by masked zeros inserted after its first ``after`` positions (the shared prefix), so every row still
    ends in the last column. The parts are used up."""
    length = max(int(part.mask.shape[1]) for part in parts)
    first = parts[0]
    for i, layer in enumerate(first.cache.layers):
        others = [part.cache.layers[i] for part in parts]
        layer.keys = torch.cat([_widen(o.keys, after, length) for o in others])
        layer.values = torch.cat([_widen(o.values, after, length) for o in others])
    first.mask = torch.cat([_widen(part.mask, after, length) for part in parts])
    first.next_position = torch.cat([part.next_position for part in parts])
    return first


def _widen(tensor: torch.Tensor, after: int, length: int) -> torch.Tensor:
    """``tensor`` (mask ``[rows, n]`` or keys ``[rows, heads, n, dim]``) with zeros inserted at ``after`` up to
    ``length`` positions."""
    axis = 1 if tensor.dim() == 2 else 2
    gap = length - tensor.shape[axis]
    if gap == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = gap
    head, tail = tensor.split([after, tensor.shape[axis] - after], dim=axis)
    return torch.cat([head, tensor.new_zeros(shape), tail], dim=axis)


class PrefixTokens:
    """Tokens every row's prompt starts with: all that encoding a row needs to know of a shared prefix."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def starts(self, ids: list[int]) -> bool:
        """Whether a row's tokens start with the prefix and go on after it."""
        return len(ids) > len(self.ids) and ids[: len(self.ids)] == self.ids


class Prefix(PrefixTokens):
    """Tokens every row's prompt starts with, run once; :meth:`rows` starts a micro-batch from its cache."""

    def __init__(self, model: torch.nn.Module, ids: list[int], device: torch.device) -> None:
        super().__init__(ids)
        self.model = model
        self.device = device
        self.cache_argument = cache_argument(model) or "past_key_values"
        self.keeps_logits = keeps_logits(model)
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.ids:
            cache = DynamicCache(config=model.config)
            tensor = torch.tensor([self.ids], device=device)
            model(
                input_ids=tensor,
                attention_mask=torch.ones_like(tensor),
                position_ids=torch.arange(len(self.ids), device=device)[None],
                use_cache=True,
                **{self.cache_argument: cache},
            )
            self._layers = [(layer.keys, layer.values) for layer in cache.layers]

    def rows(self, prefixed: torch.Tensor) -> Rows:
        """A fresh cache for ``len(prefixed)`` rows; rows where ``prefixed`` is False don't see the prefix."""
        n = int(prefixed.shape[0])
        config = self.model.config
        if self._layers:
            data = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self._layers]
            cache = DynamicCache(ddp_cache_data=data, config=config)
        else:
            cache = DynamicCache(config=config)
        flags = prefixed.to(device=self.device, dtype=torch.long)
        mask = flags[:, None].expand(n, len(self.ids)).contiguous()
        return Rows(cache, mask, flags * len(self.ids), self.cache_argument, self.keeps_logits)

    def verify(self, probe: list[int]) -> float:
        """Largest logit difference between ``probe`` continued from the prefix (left-padded beside a longer row)
        and the whole prompt run at once; raises if the model ignores the cache layout."""
        model, device = self.model, self.device
        whole = torch.tensor([self.ids + probe], device=device)
        expected = model(input_ids=whole, attention_mask=torch.ones_like(whole)).logits[0, -1].float()
        longer = probe + probe[-1:] * 3
        width = len(longer)
        ids = torch.tensor([[0] * (width - len(probe)) + probe, longer], device=device)
        mask = (torch.arange(width, device=device)[None] >= torch.tensor([[width - len(probe)], [0]], device=device))
        rows = self.rows(torch.ones(2, dtype=torch.bool, device=device))
        got = rows.extend(model, ids, mask.long(), last_only=True)[0].float()
        return float((got - expected).abs().max())


def shared_prefix(model: torch.nn.Module, ids: list[int], probe: list[int], device: torch.device) -> Prefix | None:
    """The prefix, checked on ``probe`` (a row's tokens after it); None where the model can't continue rows."""
    if not supports_reuse(model):
        log.info("prefix reuse off: %s's cache is not a plain full-attention cache", type(model).__name__)
        return None
    try:
        prefix = Prefix(model, ids, device)
        error = prefix.verify(probe)
    except Exception as exc:  # noqa: BLE001 - fall back to full recomputation, say why
        log.warning("prefix reuse off: continuing rows from a cache failed on this model (%s)", exc)
        return None
    dtype = next(model.parameters()).dtype
    if error > VERIFY_TOLERANCE.get(dtype, LOW_PRECISION_TOLERANCE):
        log.warning("prefix reuse off: continued rows differ from a full forward by %.2g on this model", error)
        return None
    log.info("prefix reuse on: %d shared prompt tokens, continued rows within %.1g of a full forward", len(ids), error)
    return prefix
