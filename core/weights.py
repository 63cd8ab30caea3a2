"""Model weights on disk: where each role's model lives under `MODEL_DIR`, what a complete
copy contains, and how to download one.

Layout: a model id such as ``Qwen/Qwen2-7B-Instruct`` lives in ``MODEL_DIR/Qwen/Qwen2-7B-Instruct``
(a plain folder, the same files as the hub repository). A model id that is an existing folder
(absolute, or relative to the working directory) is used as it is.

The worker never downloads: it loads with ``local_files_only`` after `require_model` has
checked the folder, and a missing model raises `ModelMissingError` naming the files that are
missing and the command that fetches them (`flask models fetch`). Downloading is `fetch_models`.

Both processes use it: the web's `flask models fetch/status` and the worker's engines. It
imports only the standard library and `config` (never `jobs` or `app`); nothing here imports
torch, and `huggingface_hub` is imported only by `fetch_models`. `settings` is a `config.Config`
(it holds MODEL_DIR and the model ids, parsed there).

The stems role (Demucs) is not on the hub in this layout: its folder ``MODEL_DIR/demucs/<name>``
is a Demucs local repository (what ``demucs --repo`` reads): ``<name>.yaml`` naming the model
signatures of the bag and one ``<signature>-<checksum>.th`` package per signature, downloaded
from Demucs's own file list (`DEMUCS_FILES`) and checked against the checksum in the file name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from config import (
    DEFAULT_ACESTEP_MODEL,
    DEFAULT_COVER_MODEL,
    DEFAULT_STEMS_MODEL,
    DEFAULT_STEMS_WEIGHTS_URL,
    DEFAULT_WRITER_MODEL,
)

log = logging.getLogger(__name__)

ROLES = ("music", "writer", "cover", "stems")


@dataclass(frozen=True)
class RoleModel:
    """How one role's model is named, laid out and downloaded."""

    role: str
    setting: str  # the settings name holding the model id
    default: str  # the model id the setting defaults to (config.py's default)
    layout: str  # "diffusers" (a pipeline folder with model_index.json), "transformers" or "demucs"
    allow_patterns: tuple[str, ...]  # what `fetch_models` downloads (skips duplicates/other formats)
    variant: str | None = None  # a weights variant to prefer ("fp16"), when the repo has one


_WEIGHTS = ("*.safetensors",)
_TEXT_FILES = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken")

ROLE_MODELS: dict[str, RoleModel] = {
    "music": RoleModel(
        role="music",
        setting="ACESTEP_MODEL",
        default=DEFAULT_ACESTEP_MODEL,
        layout="diffusers",
        allow_patterns=_TEXT_FILES + _WEIGHTS,
    ),
    "writer": RoleModel(
        role="writer",
        setting="WRITER_MODEL",
        default=DEFAULT_WRITER_MODEL,
        layout="transformers",
        allow_patterns=_TEXT_FILES + _WEIGHTS,
    ),
    "cover": RoleModel(
        role="cover",
        setting="COVER_MODEL",
        default=DEFAULT_COVER_MODEL,
        layout="diffusers",
        # Only the fp16 component weights: the repo also holds fp32 copies and two
        # single-file checkpoints at its root (about 30 GB we would never load).
        allow_patterns=_TEXT_FILES + ("*/*.fp16.safetensors", "*/*.fp16-*.safetensors"),
        variant="fp16",
    ),
    "stems": RoleModel(
        role="stems",
        setting="STEMS_MODEL",
        default=DEFAULT_STEMS_MODEL,
        layout="demucs",
        allow_patterns=(),  # not from the hub: `fetch_demucs`
    ),
}

# Demucs's pretrained packages as its own list names them (demucs/remote/files.txt, under
# Demucs's download root): "<signature>-<first 8 hex digits of the file's sha256>.th".
DEMUCS_FILES: dict[str, str] = {
    "955717e8": "hybrid_transformer/955717e8-8726e21a.th",  # htdemucs
    "5c90dfd2": "hybrid_transformer/5c90dfd2-34c22ccb.th",  # htdemucs_6s (+ guitar, piano)
    "f7e0c4bc": "hybrid_transformer/f7e0c4bc-ba3fe64a.th",  # htdemucs_ft: drums
    "d12395a8": "hybrid_transformer/d12395a8-e57c48e6.th",  # htdemucs_ft: bass
    "92cfc3b6": "hybrid_transformer/92cfc3b6-ef3bcb9c.th",  # htdemucs_ft: other
    "04573f0d": "hybrid_transformer/04573f0d-f3cf25b2.th",  # htdemucs_ft: vocals
}
# The bags of models the names stand for (Demucs 4.0's demucs/remote/<name>.yaml).
DEMUCS_BAGS: dict[str, dict[str, Any]] = {
    "htdemucs": {"models": ["955717e8"]},
    "htdemucs_6s": {"models": ["5c90dfd2"]},
    "htdemucs_ft": {"models": ["f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"],
                    "weights": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                                [0.0, 0.0, 0.0, 1.0]]},
}


class ModelMissingError(RuntimeError):
    """A model's weights are not (completely) in MODEL_DIR."""

    def __init__(self, role: str, model_id: str, path: Path, missing: list[str]):
        self.role = role
        self.model_id = model_id
        self.path = path
        self.missing = missing
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        super().__init__(
            f"The {role} model {model_id!r} is not complete in {path}: missing {shown}. "
            f"Download it with `flask models fetch` (it fills MODEL_DIR), "
            f"or set ENGINE_{role.upper()}=offline."
        )


class ModelFetchError(ModelMissingError):
    """A download failed (unknown repo, no access, no network); the model is still missing."""

    def __init__(self, role: str, model_id: str, path: Path, cause: BaseException, hint: str | None = None):
        self.role = role
        self.model_id = model_id
        self.path = path
        self.missing = ["the whole model"]
        RuntimeError.__init__(
            self,
            f"Could not download the {role} model {model_id!r} into {path}: {type(cause).__name__}: {cause}. "
            + (hint or "Check the model id (ACESTEP_MODEL / WRITER_MODEL / COVER_MODEL), HF_TOKEN for gated "
                       "repos, and that the hub (or HF_ENDPOINT) is reachable."),
        )


def model_dir(settings: Any) -> Path:
    """MODEL_DIR from settings."""
    return Path(settings.MODEL_DIR)


def model_id(settings: Any, role: str) -> str:
    """The model id configured for `role` (ACESTEP_MODEL, WRITER_MODEL or COVER_MODEL)."""
    return str(getattr(settings, ROLE_MODELS[role].setting))


def model_path(root: Path | str, model: str) -> Path:
    """Where `model` lives: the folder itself when it is one, else ``root/<model id>``."""
    direct = Path(model).expanduser()
    if direct.is_absolute():
        return direct
    if direct.is_dir() and ((direct / "config.json").exists() or (direct / "model_index.json").exists()):
        return direct
    return Path(root) / model


def _has_weights(folder: Path) -> list[str]:
    """Missing weight files in a component folder ([] when complete).

    A sharded checkpoint is complete when every shard its index names is present.
    """
    if not folder.is_dir():
        return [f"{folder.name}/"]
    missing: list[str] = []
    indexes = sorted(folder.glob("*.safetensors.index*.json"))
    for index in indexes:
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError):
            missing.append(f"{folder.name}/{index.name} (unreadable)")
            continue
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).exists():
                missing.append(f"{folder.name}/{shard}")
    if not indexes and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append(f"{folder.name}/*.safetensors")
    return missing


def _tokenizer_missing(folder: Path) -> list[str]:
    if (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists() or any(folder.glob("*.model")):
        return []
    return [f"{folder.name}/tokenizer.json"]


def missing_files(path: Path | str, layout: str) -> list[str]:
    """What a model folder lacks to load offline ([] when complete).

    - ``transformers``: ``config.json``, the weights (all shards) and a tokenizer;
    - ``diffusers``: ``model_index.json`` and, for every component it lists, the component's
      config and weights (tokenizers: their vocabulary; schedulers: their config);
    - ``demucs``: ``<folder name>.yaml`` and a ``<signature>-*.th`` for every model it lists.
    """
    path = Path(path)
    if not path.is_dir():
        return ["the whole folder"]
    if layout == "demucs":
        return _demucs_missing(path)
    if layout == "transformers":
        missing = [] if (path / "config.json").exists() else ["config.json"]
        missing += [m.split("/", 1)[1] if "/" in m else m for m in _has_weights(path)]
        missing += [m.split("/", 1)[1] for m in _tokenizer_missing(path)]
        return missing
    index = path / "model_index.json"
    if not index.exists():
        return ["model_index.json"]
    try:
        components = json.loads(index.read_text())
    except ValueError:
        return ["model_index.json (unreadable)"]
    missing = []
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        folder = path / name
        cls = str(value[1] or "")
        # A text tokenizer comes from transformers/tokenizers; a model named "...Tokenizer" from
        # another library (ACE-Step's AceStepAudioTokenizer) is a model with a config and weights.
        text_tokenizer = (("Tokenizer" in cls or cls == "TokenizersBackend")
                          and value[0] in ("transformers", "tokenizers"))
        if not folder.is_dir():
            missing.append(f"{name}/")
        elif text_tokenizer:
            missing += _tokenizer_missing(folder)
        elif "Scheduler" in cls:
            if not (folder / "scheduler_config.json").exists():
                missing.append(f"{name}/scheduler_config.json")
        elif "FeatureExtractor" in cls or "ImageProcessor" in cls:
            if not (folder / "preprocessor_config.json").exists():
                missing.append(f"{name}/preprocessor_config.json")
        else:
            if not (folder / "config.json").exists():
                missing.append(f"{name}/config.json")
            missing += _has_weights(folder)
    return missing


def demucs_signatures(text: str) -> list[str]:
    """The model signatures a Demucs bag file (``<name>.yaml``) lists under ``models``.

    Read without a YAML library (the web process has none): the flow list Demucs writes
    (``models: ['955717e8']``), JSON (which `fetch_demucs` writes), or a block list."""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("models"), list):
            return [str(m) for m in data["models"]]
    except ValueError:
        pass
    flow = re.search(r"^models\s*:\s*\[([^\]]*)\]", text, re.M)
    if flow:
        return [m.strip().strip("'\"") for m in flow.group(1).split(",") if m.strip().strip("'\"")]
    block = re.search(r"^models\s*:\s*\n((?:\s*-\s*.+\n?)+)", text, re.M)
    if block:
        return [line.split("-", 1)[1].strip().strip("'\"") for line in block.group(1).splitlines() if "-" in line]
    return []


def _demucs_missing(path: Path) -> list[str]:
    bag = path / f"{path.name}.yaml"
    if not bag.exists():
        return [bag.name]
    try:
        signatures = demucs_signatures(bag.read_text())
    except OSError:
        signatures = []
    if not signatures:
        return [f"{bag.name} (no models listed)"]
    # Demucs's LocalRepo names a package by the part of its file name before the last "-".
    have = {f.stem.rsplit("-", 1)[0] for f in path.glob("*.th")}
    return [f"{sig}-*.th" for sig in signatures if sig not in have]


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def fetch_demucs(path: Path | str, base_url: str = DEFAULT_STEMS_WEIGHTS_URL, *, force: bool = False,
                 echo: Callable[[str], None] | None = None, timeout: float = 60.0) -> Path:
    """Download the Demucs model named by the folder's name (htdemucs, htdemucs_6s, htdemucs_ft)
    into `path` as a Demucs local repository: each package from Demucs's file list under
    `base_url`, checked against the sha256 prefix in its file name (as Demucs checks it), then
    the bag file ``<name>.yaml`` last, so an interrupted download never looks complete.

    Raises ValueError for a name Demucs has no packages for, RuntimeError for a checksum
    mismatch (the bad file is not kept), and what urllib raises for the network."""
    import urllib.request

    say = echo or log.info
    path = Path(path)
    name = path.name
    bag = DEMUCS_BAGS.get(name)
    if bag is None:
        raise ValueError(f"Demucs has no pretrained model {name!r} to fetch; known: {', '.join(DEMUCS_BAGS)}")
    path.mkdir(parents=True, exist_ok=True)
    for sig in bag["models"]:
        relative = DEMUCS_FILES[sig]
        target = path / relative.rsplit("/", 1)[-1]
        checksum = target.stem.rsplit("-", 1)[1]
        if target.exists() and not force and _sha256(target).startswith(checksum):
            continue
        url = base_url.rstrip("/") + "/" + relative
        part = target.with_name(target.name + ".part")  # not *.th: Demucs never reads a partial file
        say(f"stems: downloading {url} ...")
        sha = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    sha.update(chunk)
                    out.write(chunk)
            if not sha.hexdigest().startswith(checksum):
                raise RuntimeError(f"checksum mismatch for {url}: expected sha256 {checksum}..., "
                                   f"got {sha.hexdigest()[:len(checksum)]}...")
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)
    (path / f"{name}.yaml").write_text(json.dumps(bag) + "\n")  # JSON is YAML: Demucs reads it
    return path


def models_present(settings: Any, role: str) -> tuple[bool, str]:
    """(present, why) for a role's model under MODEL_DIR: `why` names what is missing."""
    mid = model_id(settings, role)
    path = model_path(model_dir(settings), mid)
    missing = missing_files(path, ROLE_MODELS[role].layout)
    if missing:
        return False, f"{mid} not in {path} (missing {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''})"
    return True, f"{mid} in {path}"


def require_model(settings: Any, role: str) -> Path:
    """The folder of a role's model, checked complete; raises `ModelMissingError` otherwise."""
    mid = model_id(settings, role)
    path = model_path(model_dir(settings), mid)
    missing = missing_files(path, ROLE_MODELS[role].layout)
    if missing:
        raise ModelMissingError(role, mid, path, missing)
    return path


def weights_variant(path: Path | str, component: str, variant: str | None) -> str | None:
    """`variant` when the component folder holds weights of that variant, else None."""
    if not variant:
        return None
    folder = Path(path) / component
    if any(folder.glob(f"*.{variant}.safetensors")) or any(folder.glob(f"*.{variant}-*.safetensors")):
        return variant
    return None


def fetch_models(
    model_dir: Path | str,
    roles: Iterable[str] = ROLES,
    *,
    settings: Any = None,
    models: dict[str, str] | None = None,
    revision: str | None = None,
    token: str | None = None,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Download the models of `roles` into `model_dir` (huggingface_hub ``snapshot_download``;
    the stems model from Demucs's own URLs, `fetch_demucs`, under STEMS_WEIGHTS_URL).

    Model ids come from `models` (role -> id), else from `settings` (ACESTEP_MODEL, WRITER_MODEL,
    COVER_MODEL, STEMS_MODEL), else the defaults. A model already complete on disk is skipped unless `force`.
    The hub endpoint and token follow huggingface_hub's environment (HF_ENDPOINT, HF_TOKEN)
    unless `token` is given. Returns role -> folder; raises `ModelMissingError` when a download
    finished but the folder is still incomplete (a wrong id, or a repo in another layout).
    """
    say = echo or log.info
    root = Path(model_dir)
    done: dict[str, Path] = {}
    for role in roles:
        if role not in ROLE_MODELS:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        spec = ROLE_MODELS[role]
        mid = (models or {}).get(role) or (model_id(settings, role) if settings is not None else spec.default)
        path = model_path(root, mid)
        if not force and not missing_files(path, spec.layout):
            say(f"{role}: {mid} already in {path}")
            done[role] = path
            continue
        if Path(mid).expanduser().is_absolute():
            raise ModelMissingError(role, mid, path, missing_files(path, spec.layout))
        say(f"{role}: downloading {mid} into {path} ...")
        path.mkdir(parents=True, exist_ok=True)
        if spec.layout == "demucs":
            base_url = getattr(settings, "STEMS_WEIGHTS_URL", None) or DEFAULT_STEMS_WEIGHTS_URL
            try:
                fetch_demucs(path, base_url, force=force, echo=say)
            except Exception as exc:  # unknown name, offline, checksum: say which model
                raise ModelFetchError(role, mid, path, exc, hint=(
                    f"STEMS_MODEL must be a folder named after a Demucs model ({', '.join(DEMUCS_BAGS)}), "
                    "and STEMS_WEIGHTS_URL reachable.")) from exc
            missing = missing_files(path, spec.layout)
            if missing:
                raise ModelMissingError(role, mid, path, missing)
            say(f"{role}: {mid} ready ({_size(path)})")
            done[role] = path
            continue

        def download(patterns: tuple[str, ...]) -> None:
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(
                    repo_id=mid, local_dir=str(path), allow_patterns=list(patterns), revision=revision, token=token
                )
            except Exception as exc:  # unknown repo, gated, offline, disk full: say which model
                raise ModelFetchError(role, mid, path, exc) from exc

        download(spec.allow_patterns)
        missing = missing_files(path, spec.layout)
        if missing and spec.variant:
            # The repo has no `variant` files: take the default weights instead.
            download(_TEXT_FILES + _WEIGHTS)
            missing = missing_files(path, spec.layout)
        if missing:
            raise ModelMissingError(role, mid, path, missing)
        say(f"{role}: {mid} ready ({_size(path)})")
        done[role] = path
    return done


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".cache" not in f.parts)
    return f"{total / 1e9:.1f} GB"


def describe_models(settings: Any) -> list[dict[str, Any]]:
    """One row per role: model id, folder, present, what is missing (for `flask models` output)."""
    rows = []
    root = model_dir(settings)
    for role in ROLES:
        mid = model_id(settings, role)
        path = model_path(root, mid)
        missing = missing_files(path, ROLE_MODELS[role].layout)
        rows.append({"role": role, "model": mid, "path": str(path), "present": not missing, "missing": missing})
    return rows
