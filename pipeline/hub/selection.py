"""Which files of a model repo (or folder) make the artifact: pure, no IO.

Patterns match like huggingface_hub's `allow_patterns` (fnmatch on the path
inside the repo). Pickled weights are refused unless the config opts in: a
pickle can run code when it is loaded. When a safetensors index is selected,
only the shards it names are kept: Mistral's repos also carry the same weights
in Mistral's own format (`consolidated.safetensors`, 14.5 GB), which
transformers never reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import PurePosixPath

from pipeline.core.errors import FetchError, HubListingError, PickleRefusedError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SAFETENSORS_INDEX = "model.safetensors.index.json"


def is_pickle(name: str) -> bool:
    return name.endswith(PICKLE_SUFFIXES)


def is_weights(name: str) -> bool:
    return name.endswith(".safetensors") or is_pickle(name)


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


def check_repo_path(name: object, source: str, listed_in: str) -> str:
    """`name` if it is a plain relative POSIX path inside the repo; the hub's word never decides where a
    file lands, so an absolute path, a `..`, a backslash or an odd spelling (`a//b`, `./a`) is refused."""
    path = PurePosixPath(name) if isinstance(name, str) else None
    if (
        path is None
        or not name
        or path.is_absolute()
        or path.as_posix() != name
        or any(part in ("..", ".") for part in path.parts)
        or "\\" in name
        or "\0" in name
    ):
        raise HubListingError(
            f"{source}: {listed_in} is malformed: it names {name!r}, which is not a relative path inside "
            "the repo; nothing was written. Check HF_ENDPOINT points at a hub you trust",
            file=str(name),
        )
    return name


def indexed_shards(index_text: str, source: str) -> frozenset[str]:
    """The shard files a `model.safetensors.index.json` names (its weight_map's values)."""
    try:
        weight_map = json.loads(index_text)["weight_map"]
        shards = frozenset(weight_map.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FetchError(
            f"{source}: {SAFETENSORS_INDEX} has no readable weight_map; the repo looks broken",
            file=SAFETENSORS_INDEX,
        ) from None
    return frozenset(check_repo_path(shard, source, SAFETENSORS_INDEX) for shard in shards)


def select_files(
    names: Iterable[str],
    *,
    patterns: Iterable[str],
    allow_pickle: bool,
    source: str,
    shards: frozenset[str] | None = None,
) -> list[str]:
    """The names to fetch, sorted. `shards`: what the selected safetensors index names, once it is read."""
    names = sorted(names)
    patterns = tuple(patterns)
    selected = [n for n in names if matches(n, patterns)]
    pickled = [n for n in selected if is_pickle(n)]
    if pickled and not allow_pickle:
        raise PickleRefusedError(
            f"{source}: {pickled[0]} is pickled weights, which can run code when loaded: remove its pattern "
            "from model.allow_patterns, or set model.allow_pickle = true if you trust this repo",
            file=pickled[0],
        )
    if shards is not None:
        missing = sorted(shards - set(names))
        if missing:
            raise FetchError(
                f"{source}: {SAFETENSORS_INDEX} names {missing[0]}, which is absent", file=missing[0]
            )
        left_out = sorted(shards - set(selected))
        if left_out:
            raise FetchError(
                f"{source}: model.allow_patterns leaves out {left_out[0]}, a shard the index needs: "
                "add a pattern that matches it",
                file=left_out[0],
            )
        selected = [n for n in selected if not n.endswith(".safetensors") or n in shards]
    if not any(is_weights(n) for n in selected):
        only_pickled = [n for n in names if is_pickle(n)]
        if only_pickled and not allow_pickle:
            raise PickleRefusedError(
                f"{source}: has no safetensors weights, only pickled ones ({only_pickled[0]}): set "
                "model.allow_pickle = true and add their pattern to model.allow_patterns if you trust this repo",
                file=only_pickled[0],
            )
        raise FetchError(f"{source}: no weight files match model.allow_patterns")
    if "config.json" not in selected:
        raise FetchError(
            f"{source}: no config.json selected: not a Hugging Face model folder, "
            "or model.allow_patterns leaves it out"
        )
    return selected


def select_model_files(
    names: Iterable[str],
    *,
    patterns: Iterable[str],
    allow_pickle: bool,
    source: str,
    read_index: Callable[[], str],
) -> list[str]:
    """select_files, then, if a safetensors index is among them, again with the shards it names."""
    names, patterns = list(names), tuple(patterns)
    selected = select_files(names, patterns=patterns, allow_pickle=allow_pickle, source=source)
    if SAFETENSORS_INDEX not in selected:
        return selected
    shards = indexed_shards(read_index(), source)
    return select_files(names, patterns=patterns, allow_pickle=allow_pickle, source=source, shards=shards)
