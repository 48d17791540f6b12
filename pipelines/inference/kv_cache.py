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

#: The largest difference between a continued row's logits and a full forward's that :meth:`Prefix.verify` accepts.
VERIFY_TOLERANCE = 1e-3


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

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the rows at ``index`` (in that order; an index may repeat, copying the row)."""
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_position = self.next_position[index]

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


class Prefix:
    """Tokens every row's prompt starts with, run once; :meth:`rows` starts a micro-batch from its cache."""

    def __init__(self, model: torch.nn.Module, ids: list[int], device: torch.device) -> None:
        self.model = model
        self.ids = list(ids)
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

    def __len__(self) -> int:
        return len(self.ids)

    def starts(self, ids: list[int]) -> bool:
        """Whether a row's tokens start with the prefix and go on after it."""
        return len(ids) > len(self.ids) and ids[: len(self.ids)] == self.ids

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
    if error > VERIFY_TOLERANCE:
        log.warning("prefix reuse off: continued rows differ from a full forward by %.2g on this model", error)
        return None
    return prefix
