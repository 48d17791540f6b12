"""Token-by-token decoding of a micro-batch in a KV cache, where a row that finishes leaves the batch.

``model.generate`` keeps a finished row in the batch until the longest one ends,
computing padding for it at every step; here the row's cache, mask and position
are dropped as soon as it ends (end-of-sequence token, a stop string, or its
token budget), so the batch shrinks as rows finish. Rows start in the layout of
:mod:`pipelines.inference.kv_cache` (a shared prefix, left padding, the row's
prompt); each step picks ``argmax`` of the processed scores, so greedy decoding
is plain ``argmax`` and sampling is a processor that adds noise (the caller's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from pipelines.inference.kv_cache import Rows

#: ``process(history, scores, rows, step)``: the scores to take the argmax of, for the rows at ``rows`` (their
#: indices among the sequences first given), whose tokens so far are ``history`` (``[rows, tokens]``).
Process = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

#: ``stops(tokens)``: for each sequence's generated tokens, whether it must end here (a stop string).
Stops = Callable[[list[list[int]]], list[bool]]


@dataclass
class Sequence:
    """One decoded sequence: its tokens (a final end-of-sequence token left out) and why it ended."""

    tokens: list[int]
    reason: Literal["eos", "stop", "length"] = "length"


def decode(
    model: torch.nn.Module,
    rows: Rows,
    logits: torch.Tensor,
    history: torch.Tensor,
    max_new_tokens: int,
    eos: list[int],
    process: Process | None = None,
    stops: Stops | None = None,
) -> list[Sequence]:
    """Decode from ``logits`` (``[rows, vocab]``, the next-token logits after each row's prompt) onwards.

    Ended rows stay in the batch (their tokens ignored) until an eighth of the batch has ended: dropping rows
    copies the whole cache, so it is done now and then, not at every step.
    """
    device = logits.device
    n = len(rows)
    done = [Sequence([]) for _ in range(n)]
    active = torch.arange(n, device=device)  # the sequence in each row of the batch
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    eos_ids = torch.tensor(eos or [-1], device=device)
    rows.reserve(max_new_tokens)  # each step then writes its keys and values in place
    for step in range(max_new_tokens):
        scores = logits.float()
        if process is not None:
            scores = process(history, scores, active, step)
        chosen = scores.argmax(dim=-1)
        at_eos = torch.isin(chosen, eos_ids)
        ended |= torch.tensor(
            _record(done, active.tolist(), chosen.tolist(), at_eos.tolist(), ended.tolist(), stops), device=device
        )
        if step == max_new_tokens - 1 or bool(ended.all()):
            break
        if int(ended.sum()) >= max(1, len(active) // 8):
            keep = ~ended
            rows.keep(torch.nonzero(keep)[:, 0], compact=True)
            active, chosen, history, ended = active[keep], chosen[keep], history[keep], ended[keep]
        history = torch.cat([history, chosen[:, None]], dim=1)
        logits = rows.extend(model, chosen[:, None], torch.ones_like(chosen)[:, None], last_only=True)
    return done


def _record(
    done: list[Sequence],
    active: list[int],
    chosen: list[int],
    at_eos: list[bool],
    ended: list[bool],
    stops: Stops | None,
) -> list[bool]:
    """Append each running row's token; which rows have ended (before or with this token)."""
    finished = list(ended)
    for i, (row, token, end) in enumerate(zip(active, chosen, at_eos)):
        if finished[i]:
            continue
        if end:
            done[row].reason = "eos"
            finished[i] = True
        else:
            done[row].tokens.append(token)
    if stops is not None:
        open_rows = [i for i, f in enumerate(finished) if not f]
        hits = stops([done[active[i]].tokens for i in open_rows])
        for i, hit in zip(open_rows, hits):
            if hit:
                done[active[i]].reason = "stop"
                finished[i] = True
    return finished
