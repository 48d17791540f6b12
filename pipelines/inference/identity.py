"""Which model files a run uses, told without loading them (light: no torch).

A local model directory (built-in aliases resolve to one) is known by a hash of every file's name and content;
``files_key`` (names, sizes, modification times) tells cheaply that nothing changed, so the content is hashed
again only where a file was written since. A Hugging Face id is known by the commit its revision resolves to in
the local cache (no network), where it is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import PipelineError
from pipelines.inference.aliases import resolve_name
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def model_files(spec: ModelSpec, known: dict[str, str] | None = None) -> dict[str, str] | None:
    """``{"files", "content"}`` of a local model directory, ``{"commit"}`` of a hub id found in the local cache,
    else None (not known here: a hub id not cached, a directory only the workers have). ``known``: an earlier
    answer, whose content is taken again where the files' names, sizes and times are the same."""
    source = resolve_name(spec)
    if Path(source).is_dir():
        folder = Path(source)
        try:
            files = files_key(folder)
            if known and known.get("files") == files and known.get("content"):
                return {"files": files, "content": known["content"]}
            return {"files": files, "content": directory_hash(folder)}
        except OSError as exc:  # not the output's: said as the model folder's
            raise PipelineError(
                f"model.name {spec.name}: cannot read the files of {folder} ({exc.strerror or exc}); this process "
                "must be able to read every file of a model folder (fix their permissions)"
            ) from None
    commit = cached_commit(source, spec.revision)
    return {"commit": commit} if commit else None


def changed(before: dict[str, str] | None, now: dict[str, str] | None) -> bool:
    """Whether two answers of :func:`model_files` name different files (an unknown one changes nothing)."""
    if not before or not now:
        return False
    for name in ("content", "commit"):
        if before.get(name) and now.get(name):
            return before[name] != now[name]
    return False


def _files(folder: Path) -> Iterator[tuple[str, Path]]:
    """The directory's files by relative path, hidden files and folders left out, in a fixed order. A subfolder that
    is a symbolic link is not descended into (pathlib's rglob): its files are not the folder's own, and nothing loads
    from a model folder's subfolders. Following them would change the hash of every recorded output whose folder has
    one (each refused once as changed): that would need a versioned identity."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if not any(part.startswith(".") for part in relative.parts):
            yield str(relative), path


def files_key(folder: Path) -> str:
    """A hash of the files' names, sizes and modification times."""
    digest = hashlib.sha256()
    for relative, path in _files(folder):
        stat = path.stat()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


#: Content hashes taken in this process, by folder and :func:`files_key`: a run's record, the scheduler's lineage and
#: ``quantization: auto``'s kept decision each ask for the same folder's, and a model of many GB takes seconds.
_hashed: dict[tuple[str, str], str] = {}


def directory_hash(folder: Path) -> str:
    """sha256 over every file's relative path and content (hidden files and folders left out); read once per
    process while the files' names, sizes and times stay the same."""
    key = (str(folder), files_key(folder))
    if key not in _hashed:
        _hashed[key] = _content_hash(folder)
    return _hashed[key]


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for relative, path in _files(folder):
        digest.update(relative.encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision resolves to, if the model is in the local cache (no network)."""
    if revision and COMMIT.match(revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception as exc:  # noqa: BLE001 - best effort for hub ids
        log.debug("no cached commit for %s: %s", repo_id, exc)
        return None
    if isinstance(found, str):
        match = re.search(r"/snapshots/([0-9a-f]{40})/", found)
        return match.group(1) if match else None
    return None


def generation_settings(spec: ModelSpec) -> dict[str, Any] | None:
    """The decoding settings the model's own files set, as Transformers reads them when it loads the model: its
    ``generation_config.json``, else (older models) the generation settings in its ``config.json`` (at the top, else
    in its decoder's or text model's part); read without loading the model. None where the files are not here (a hub
    id not in the local cache, a folder only the workers have)."""
    source = resolve_name(spec)
    folder = Path(source)

    def read(name: str) -> dict[str, Any] | None:  # the file's settings; ABSENT where it is known not to be there
        if folder.is_dir():
            path = folder / name
            if not path.is_file():
                return ABSENT
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(source, name, revision=spec.revision)
            except Exception as exc:  # noqa: BLE001 - best effort for hub ids
                log.debug("no cached %s for %s: %s", name, source, exc)
                return None
            if not isinstance(found, str):  # None: not known here; else known not to be in the repository
                return None if found is None else ABSENT
            path = Path(found)
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    configured = read("generation_config.json")
    if configured is not ABSENT:
        return configured
    config = read("config.json")
    if config is None or config is ABSENT:
        return None
    found = {k: v for k, v in config.items() if v is not None}
    for part in ("decoder", "generator", "text_config"):  # what is unset at the top: the decoder's (the first found)
        if isinstance(config.get(part), dict):
            found = {**{k: v for k, v in config[part].items() if v is not None}, **found}
            break
    return found


ABSENT: dict[str, Any] = {}  # generation_settings: a file known not to be there (compared by identity)
