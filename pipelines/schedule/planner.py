"""What a scheduled invocation should do, decided from facts in memory: no files are read or written here, but
for the input files whose modification time changed while their size did not, which the executor's
``same_content`` reads to tell whether their bytes are the ones scored.

The executor gathers the facts (the ledger's :class:`History`, the input shards
now, the model's lineage, each partition's recorded spec and committed shards)
and asks the planner, step by step:

- :meth:`Planner.resume` — how to finish an unfinished run in its own partition;
- :meth:`Planner.new_work` — which shards are new or changed (or every shard, to
  rescore) and what the new run's ledger line says, or why there is nothing to do;
- :meth:`Planner.retirements` — which outputs newer ones replace, to move to ``_superseded/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.inference.identity import changed
from pipelines.io.shards import Shard
from pipelines.output.records import HASH_VERSION, ShardInput, prefixed_hash
from pipelines.schedule.ledger import GONE_NAMED, History, LedgerEntry, LedgerInput
from pipelines.schedule.lineage import same_model
from pipelines.schedule.ticks import Decision, run_id

#: Whether a shard's bytes hash to the digest its commit recorded (None where none was recorded: False).
SameContent = Callable[[Shard, str | None], bool]
#: The keys of the shards a run's partition holds, but for those leaving it, that quarantined a ``duplicate id``.
Repeats = Callable[[str, set[str]], set[str]]


def never_same(shard: Shard, digest: str | None) -> bool:
    """A :data:`SameContent` that reads nothing: a file whose time changed is changed."""
    return False


def same_input(recorded: ShardInput | LedgerInput | HeldCommit, shard: Shard, same_content: SameContent) -> bool:
    """Whether ``shard`` is the file that was scored: the same size, and the same modification time or, where the
    time is another (a copy without its times, a new download), the bytes its commit recorded a digest of. A
    record without a digest (written before commits recorded one) is compared by size and time only."""
    if recorded.size != shard.size:
        return False
    return recorded.mtime_ns == shard.mtime_ns or same_content(shard, recorded.digest)


def gone_fields(gone: list[str]) -> dict[str, Any]:
    """A ledger line's ``gone`` (the first few names) and ``gone_count``; nothing where none is gone."""
    return {"gone": gone[:GONE_NAMED], "gone_count": len(gone)} if gone else {}


def nothing_new(shards: int, held: dict[str, str], commits: dict[str, HeldCommit]) -> str:
    """The ``empty`` line's note: the input's shards scored already, and those unfinished runs hold (``held``: shard
    key → run), which are not scored yet where the run has not committed them (a file that fails its run)."""
    if not held:
        return f"no new input ({shards} shard(s) scored already)"
    runs = sorted(set(held.values()))
    waiting = sum(1 for key, run in held.items() if key not in commits or commits[key].run != run)
    whose = (f"unfinished run {runs[0]}, which is" if len(runs) == 1 else
             f"unfinished runs {', '.join(runs)}, which are")
    return (f"no new input ({shards - len(held)} shard(s) scored already; {len(held)} held by {whose} to finish them"
            f"{f': {waiting} not committed yet' if waiting else ''})")


@dataclass(frozen=True)
class PartitionState:
    """What a partition holds: the spec hash and model files its ``_job.json`` records, and its commits' input
    fingerprints."""

    spec_hash: str | None = None
    committed: dict[str, ShardInput] = field(default_factory=dict)  # key → the input its commit record recorded
    model_files: dict[str, str] | None = None


@dataclass(frozen=True)
class HeldCommit:
    """A shard an unfinished run has committed: the run, and the input's fingerprint as it was committed."""

    run: str
    size: int
    mtime_ns: int | None
    digest: str | None = None


@dataclass
class RunPlan:
    """Score ``shards`` into partition ``run``; ``entry`` is the ledger line's content before it starts."""

    run: str
    shards: list[Shard]
    entry: LedgerEntry
    overwrite: bool = False
    warnings: list[str] = field(default_factory=list)
    gone: dict[str, str] = field(default_factory=dict)  # a resume's planned shards whose file is gone: key → name


@dataclass(frozen=True)
class Retirement:
    """Move to ``_superseded/`` a whole partition (``key`` None) or one shard's output in it."""

    run: str
    key: str | None = None


class Planner:
    """Plans for one job from its ledger history, its current input shards and its model lineage."""

    def __init__(
        self, history: History, shards: list[Shard], lineage: dict, spec_hash: str, prediction_prefix: str = "",
        same_content: SameContent = never_same, partitions: set[str] | None = None, repeats: Repeats | None = None,
    ) -> None:
        self.history = history
        self.shards = shards
        self.lineage = lineage
        self.spec_hash = spec_hash
        self.prediction_prefix = prediction_prefix  # to read the hashes of ledger lines written before it counted
        self.same_content = same_content
        #: The run ids of the partitions in the output now (None: not looked at, taken to be all there).
        self.partitions = partitions
        self.repeats = repeats

    def unchanged(self, recorded: ShardInput | LedgerInput | HeldCommit, shard: Shard) -> bool:
        """Whether a shard is still the file that was scored (see :func:`same_input`)."""
        return same_input(recorded, shard, self.same_content)

    def resume(
        self, run: str, decision: Decision, partition: PartitionState, held: dict[str, HeldCommit] | None = None
    ) -> RunPlan:
        """Finish an unfinished run: its committed shards stay, the rest of its planned shards are scored.

        A run started with another model or spec is redone whole with the current one: its partition is cleared,
        so a shard a later unfinished run took over but has not committed yet (``held``: shard key → the newest
        unfinished run that committed it) is scored again here, to keep an output until that run replaces it.
        """
        held = held or {}
        plan = self.history.first_attempt(run)
        overwrite = (partition.spec_hash is not None and partition.spec_hash != self.spec_hash) or self._new_model(
            run, partition
        )
        warnings = []
        if overwrite:
            warnings.append(f"run {run} was started with another model or spec: redoing it whole with the current one")
        current = {s.key: s for s in self.shards}
        later = {key for key, (_, by) in self.history.scored().items() if by > run}
        taken = self.history.taken_over(run)  # a later run scores its newer version, finished or not
        if overwrite:  # this partition is cleared: only what a later run has committed is that run's already
            taken = {key for key in taken if key in held and held[key].run > run}
        later |= taken
        shards, gone = [], {}
        for item in plan.inputs or []:
            shard = current.get(item.key)
            if shard is None:
                warnings.append(f"run {run}: {item.name or item.uri} is gone since the run started; left out")
                gone[item.key] = item.name or item.uri
                continue
            if shard.key in later:  # scored after this run (a rescore, or a changed shard): it is that run's
                continue
            done = partition.committed.get(shard.key)
            if done and not overwrite and not self.unchanged(done, shard):
                continue  # changed after it was committed here: scored again as a changed shard
            shards.append(shard)
        entry = LedgerEntry(
            tick=run_id(decision.tick),
            kind="resume",
            status="running",
            rescore=plan.rescore,
            replaces=plan.replaces,
            attempt=self.history.attempts(run) + 1,
            model=self.lineage,
            note="redone with the current model/spec" if overwrite else "",
        )
        return RunPlan(run, shards, entry, overwrite, warnings, gone)

    def _new_model(self, run: str, partition: PartitionState) -> bool:
        """Whether the model is not the one that scored what the partition holds: its ``_job.json`` says which files
        did (written when a run starts scoring, after any clearing), else the run's last attempt (a resume redone
        whole with a new model is not redone again at the next attempt)."""
        now = {name: value for name, value in (("content", self.lineage.get("content_hash")),
                                               ("commit", self.lineage.get("commit"))) if value}
        if partition.model_files and now:
            return changed(partition.model_files, now)
        return not same_model(self.history.last_attempt(run).model, self.lineage)  # files unknown here

    def new_work(
        self, decision: Decision, rescore: bool, unfinished_commits: dict[str, HeldCommit] | None = None,
        only_repeats: bool = False,
    ) -> RunPlan | LedgerEntry:
        """The run that scores new and changed shards (every shard, to rescore), or the ``empty`` line.

        Shards an unfinished run planned are that run's to finish (even while it keeps failing), so they
        are left out until it succeeds or is abandoned, but for one it committed that has changed since: its
        resume leaves that out, so it is a changed shard here. ``unfinished_commits``: shard key → the
        unfinished run that has committed it; a rescore replaces those outputs too. ``only_repeats``: none but the
        shards to score again for the duplicate ids they quarantined (see :meth:`repeats_again`).
        """
        scored = self.history.scored()
        # A partition deleted or moved away by hand: the ledger still says its shards are scored, but their rows are
        # gone from the output, so they are new input again (their old run stays in `replaces`, so that a partition
        # put back from a backup has its older version moved to _superseded/, not read beside the new one).
        lost = {key: run for key, (_, run) in scored.items()
                if self.partitions is not None and run not in self.partitions}
        scored = {key: found for key, found in scored.items() if key not in lost}
        commits = unfinished_commits or {}
        now = {s.key: s for s in self.shards}
        claimed = {} if rescore else self.history.claimed()
        changed = {
            key: run for key, run in claimed.items()
            if key in now and key in commits and commits[key].run == run and not self.unchanged(commits[key], now[key])
        }
        claimed = {key: run for key, run in claimed.items() if key not in changed}
        gone = sorted(item.name or item.uri for key, (item, _) in scored.items() if key not in now)
        if rescore:
            todo = list(self.shards)
        elif only_repeats:
            todo = []
        else:
            todo = [
                s for s in self.shards
                if s.key not in claimed
                and (s.key in changed or s.key not in scored or not self.unchanged(scored[s.key][0], s))
            ]
        # A shard's earlier output moves to _superseded/ just before its new one appears: a changed shard's, and
        # every shard's in a rescore (so a rescore that fails part way, or is abandoned, leaves each row once).
        replaces = {s.key: scored[s.key][1] for s in todo if s.key in scored}
        changed_count = len(replaces.keys() | changed.keys())
        again = {} if rescore else self.repeats_again(todo, scored, claimed, now, changed)
        todo += [now[key] for key in again]
        replaces.update(again)
        rescored = {s.key: lost[s.key] for s in todo if s.key in lost}
        replaces.update(rescored)
        replaces.update(changed)  # the version an unfinished run committed is the newest
        if rescore:
            replaces.update({key: held.run for key, held in commits.items() if key in now})
        if not todo:
            nothing = nothing_new(len(self.shards), {k: r for k, r in claimed.items() if k in now}, commits)
            note = "; ".join(part for part in (decision.note(), nothing) if part)  # a late tick's note and what waits
            return LedgerEntry(
                tick=run_id(decision.tick), kind="tick", status="empty", missed=decision.missed, note=note,
                model=self.lineage, spec_hash=self.spec_hash, hash_version=HASH_VERSION, inputs=[], **gone_fields(gone),
            )
        changes, warning = self.changes_since_last_run(rescore)
        warnings = [warning] if warning else []
        notes = [decision.note()] if decision.note() else []
        if again:
            notes.append(f"{len(again)} shard(s) that quarantined duplicate ids scored again")
            warnings.append(
                f"{len(again)} shard(s) that quarantined duplicate ids ({', '.join(sorted(now[k].name for k in again))}"
                ") are scored again: output that their partition held, the rows they repeated maybe, left it"
            )
        if rescored and not rescore:
            runs = ", ".join(f"run={run}" for run in sorted(set(rescored.values())))
            notes.append(f"{len(rescored)} shard(s) scored again: their partition {runs} is gone from the output")
            warnings.append(
                f"{len(rescored)} shard(s) scored by {runs.replace('run=', '')} are scored again: that partition is "
                f"gone from the output (deleted or moved by hand?), and its rows with it; the ledger still lists it"
            )
        entry = LedgerEntry(
            tick=run_id(decision.tick),
            kind="rescore" if rescore else "tick",
            status="running",
            rescore=rescore,
            replaces=replaces,
            lost=rescored or None,
            repeats=again or None,
            missed=decision.missed,
            note="; ".join(notes),
            attempt=1,
            model=self.lineage,
            **gone_fields(gone),
            **changes,
        )
        if changed_count and not rescore:
            warnings.append(
                f"{changed_count} shard(s) changed since they were scored; their earlier output moves to "
                "_superseded/ once rescored"
            )
        return RunPlan(run_id(decision.tick), todo, entry, False, warnings)

    def repeats_again(
        self, todo: list[Shard], scored: dict[str, tuple[LedgerInput, str]], claimed: dict[str, str],
        now: dict[str, Shard], changed: dict[str, str],
    ) -> dict[str, str]:
        """Under ``errors.duplicate_ids: error``, the shards (key → the run whose partition holds them) to score again
        beside ``todo`` because they quarantined a ``duplicate id`` in a partition another shard's output leaves: a
        changed shard's in ``todo``, or a gone one's that ``--prune`` moved away (its ledger line's ``repeats``).
        Screened on their own, a partition's ids may then hold the id such a row repeated nowhere; scored again with
        the others, each row is screened against the new partition. A shard scored since in another run is not.
        ``changed``: shards an unfinished run committed that changed since (key → that run): their output leaves that
        run's partition too, and the shards of it that quarantined duplicate ids are taken over from it the same way
        (that run's resume leaves them out, as it does a changed shard)."""
        pending = {key: run for entry in self.history.entries for key, run in (entry.repeats or {}).items()}
        leaving: dict[str, set[str]] = {}
        for shard in todo:
            if shard.key in changed or shard.key in scored:
                run = changed[shard.key] if shard.key in changed else scored[shard.key][1]
                leaving.setdefault(run, set()).add(shard.key)
        if self.repeats is not None:
            for run, keys in leaving.items():
                pending.update(dict.fromkeys(self.repeats(run, keys), run))
        planned = {s.key for s in todo}
        return {key: run for key, run in pending.items()
                if key in now and key not in planned
                and (claimed.get(key) == run if key in claimed else key in scored and scored[key][1] == run)}

    def changes_since_last_run(self, rescore: bool) -> tuple[dict, str | None]:
        """``model_changed`` / ``spec_changed`` versus the newest run, and a warning unless rescoring."""
        last = self.history.last_model()
        if last is None:
            return {}, None
        previous_model, previous_run = last
        previous = self.history.latest()[previous_run]
        previous_spec = previous.spec_hash
        if previous_spec and previous.hash_version < HASH_VERSION:  # a line written before the hash covered the prefix
            previous_spec = prefixed_hash(previous_spec, self.prediction_prefix)
        changes = {}
        if not same_model(previous_model, self.lineage):
            changes["model_changed"] = {"from": previous_model, "to": self.lineage, "since": previous_run}
        if previous_spec and previous_spec != self.spec_hash:
            changes["spec_changed"] = {"from": previous_spec, "to": self.spec_hash, "since": previous_run}
        if not changes or rescore:
            return changes, None
        base = self.history.base()
        older = [r for r, e in self.history.latest().items() if r >= base and e.status == "succeeded"]
        warning = (
            f"the {' and '.join(k.split('_')[0] for k in changes)} changed since run {previous_run}: new input is "
            f"scored with the new one, but {len(older)} earlier partition(s) ({older[0] if older else '-'} ... "
            f"{older[-1] if older else '-'}) hold rows scored with the old one; to rescore every shard with the new "
            "one, run `pipelines schedule JOB --once --rescore`"
        )
        return changes, warning

    def prunes(self) -> list[Retirement]:
        """The scored outputs of shards whose input file is gone (``--prune`` moves them to ``_superseded/``)."""
        current = {s.key for s in self.shards}
        return [Retirement(run, key) for key, (_, run) in self.history.scored().items() if key not in current]

    def retirements(self, partitions: list[str], committed: set[tuple[str, str]]) -> list[Retirement]:
        """Outputs that newer ones replace: partitions before the last rescore, and older versions of shards
        whose newer version is committed (``committed``: the (run, shard key) pairs that have a commit record)."""
        base = self.history.base()
        moves = [Retirement(run) for run in partitions if run < base]
        for run, entry in self.history.latest().items():
            if run < base:
                continue
            for key, old in (entry.replaces or {}).items():
                if base <= old < run and (run, key) in committed:
                    moves.append(Retirement(old, key))
        return moves

