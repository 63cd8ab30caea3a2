"""Engine selection: one writer, one music engine and one cover engine per worker.

`load_engines(settings)` builds the three once (the GPU worker calls it before its first job)
and returns an `Engines` holder. Each role is real or offline, chosen by ``ENGINE``
(``auto`` | ``real`` | ``offline``) and the per-role overrides ``ENGINE_MUSIC``,
``ENGINE_WRITER`` and ``ENGINE_COVER``:

- ``offline``: the CPU engines that need no weights;
- ``real``: the real model, or an error naming what is missing (a worker told to run the real
  models should not quietly run something else);
- ``auto`` (default): the real model where CUDA is available AND its weights are complete in
  ``MODEL_DIR``, else the offline engine; a real model that fails to load also falls back. The
  choice and the reason are logged and kept in `Engines.reasons` for the UI.

A fourth, optional role, ``stems`` (Demucs, `demucs_stems.DemucsStems`), follows the same rules
with ``ENGINE_STEMS``; its offline engine is none (`Engines.stems` is None): the studio's stems
job then uses the offline split (the arranger's own tracks, or a spectral split).

With ``WRITER_URL`` set, the writer role (``auto`` or ``real``) is the served writer
(`served_writer.ServedWriter`, a model server's chat-completions API): no CUDA or weights are
needed for it in this process. ``ENGINE_WRITER=offline`` (or ``ENGINE=offline``) still wins.

Importing this package does not import torch: the heavy libraries load inside the real
engines' constructors, and the CUDA helpers only look at torch if it is already imported.

`settings` is a `config.Config` (or `TestConfig`): every setting read here was parsed to its
final type there (modes and devices lower-cased and checked, numbers, booleans), once.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .base import CoverEngine, MusicEngine, Writer

log = logging.getLogger(__name__)

__all__ = [
    "Engines",
    "LOAD_COUNTS",
    "MODES",
    "cuda_available",
    "engine_device",
    "is_cuda_oom",
    "is_fatal_cuda_error",
    "load_engines",
    "role_mode",
]

MODES = ("auto", "real", "offline")
ROLES = ("music", "writer", "cover")
OPTIONAL_ROLES = ("stems",)  # not part of every song: never labels a song offline
ALL_ROLES = ROLES + OPTIONAL_ROLES

LOAD_COUNTS: Counter = Counter()
"""How many times each role's engine was built in this process (real or offline).

A worker builds each role once; a job never builds engines, so these stay put across jobs.
"""


@dataclass
class Engines:
    """The three engines a worker keeps for its whole life, and how they were chosen."""

    writer: Writer
    music: MusicEngine
    cover: CoverEngine
    stems: Any = None  # the stems separator (DemucsStems); None: the offline split in jobs.studio
    reasons: dict[str, str] = field(default_factory=dict)  # role -> why this engine
    load_seconds: dict[str, float] = field(default_factory=dict)  # role -> seconds to build
    vram: dict[str, Any] = field(default_factory=dict)  # GPU memory after loading (bytes)

    def engine(self, role: str) -> Any:
        """The engine of a role name ("music", "writer", "cover" or "stems"; stems may be None)."""
        return {"music": self.music, "writer": self.writer, "cover": self.cover, "stems": self.stems}[role]

    @property
    def offline_roles(self) -> list[str]:
        """Roles served by an offline engine (songs made by them are labelled so)."""
        return [role for role in ROLES if getattr(self.engine(role), "offline", True)]

    def as_dict(self) -> dict[str, Any]:
        """Per role: engine name, offline flag, reason, load seconds; plus VRAM (for the UI)."""
        return {
            "roles": {
                role: {
                    "name": _engine_name(self.engine(role)),
                    "offline": bool(getattr(self.engine(role), "offline", True)),
                    "reason": self.reasons.get(role, ""),
                    "load_seconds": round(self.load_seconds.get(role, 0.0), 2),
                }
                for role in ALL_ROLES
            },
            "vram": dict(self.vram),
        }

    def describe(self) -> str:
        """One line for logs: which engine serves each role and why, load times and VRAM."""
        parts = []
        for role in ALL_ROLES:
            eng = self.engine(role)
            kind = "offline" if getattr(eng, "offline", True) else "real"
            name = _engine_name(eng)
            secs = self.load_seconds.get(role)
            timing = f", {secs:.1f} s" if secs is not None else ""
            parts.append(f"{role}={name} ({kind}{timing}: {self.reasons.get(role, '')})")
        line = "; ".join(parts)
        if self.vram:
            line += "; VRAM " + _format_vram(self.vram)
        return line


def _engine_name(engine: Any) -> str:
    if engine is None:  # the stems role offline
        return "offline split"
    return getattr(engine, "name", type(engine).__name__)


def _format_vram(vram: dict[str, Any]) -> str:
    gb = 1024**3
    allocated = vram.get("allocated", 0) / gb
    peak = vram.get("peak", 0) / gb
    total = vram.get("total", 0) / gb
    return f"{allocated:.1f} GiB allocated, {peak:.1f} GiB peak of {total:.1f} GiB on {vram.get('device', '?')}"


# ---------------------------------------------------------------------------------------------
# CUDA helpers (never import torch themselves)
# ---------------------------------------------------------------------------------------------


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


_OOM_MARKERS = ("cuda out of memory", "cublas_status_alloc_failed", "out of memory on device", "hip out of memory")
_FATAL_MARKERS = (
    "cuda error",
    "cudnn_status",
    "cublas_status",
    "cudnn error",
    "device-side assert",
    "illegal memory access",
    "an illegal instruction",
    "unspecified launch failure",
    "cuda driver",
    "nccl error",
    "misaligned address",
    "uncorrectable ecc",
    "hip error",
)


def is_cuda_oom(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is a GPU out-of-memory error.

    The job fails cleanly on these and the worker keeps serving (the allocator cache is freed).
    """
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is None:
        oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    for e in _chain(exc):
        if oom_type is not None and isinstance(e, oom_type):
            return True
        if isinstance(e, (RuntimeError, MemoryError)) and any(m in str(e).lower() for m in _OOM_MARKERS):
            return True
    return False


def is_fatal_cuda_error(exc: BaseException) -> bool:
    """True for a CUDA error other than out-of-memory (the CUDA context may be unusable).

    The worker should fail the job and exit so its process manager restarts it.
    """
    if is_cuda_oom(exc):
        return False
    torch = sys.modules.get("torch")
    accel = getattr(torch, "AcceleratorError", None)
    for e in _chain(exc):
        if accel is not None and isinstance(e, accel):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _FATAL_MARKERS):
            return True
    return False


def cuda_available() -> tuple[bool, str]:
    """(available, why) without failing when torch is not installed."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (the `gpu` extra)"
    try:
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, f"CUDA device {torch.cuda.get_device_name(0)}"
    except Exception as exc:  # a broken driver reads as "no CUDA"
        return False, f"CUDA unusable ({exc})"


def engine_device(settings: Any) -> str:
    """The device the real engines use: ENGINE_DEVICE, or ``cuda`` when available, else ``cpu``."""
    if settings.ENGINE_DEVICE != "auto":
        return settings.ENGINE_DEVICE
    return "cuda" if cuda_available()[0] else "cpu"


def _mode_setting(settings: Any, role: str) -> str:
    """The settings name that decides a role: ENGINE_<ROLE> when set, else ENGINE."""
    name = f"ENGINE_{role.upper()}"
    return name if getattr(settings, name, None) else "ENGINE"


def role_mode(settings: Any, role: str) -> str:
    """auto | real | offline for one role (ENGINE_<ROLE> overrides ENGINE; config.py checked both)."""
    return getattr(settings, _mode_setting(settings, role))


# ---------------------------------------------------------------------------------------------
# Building engines
# ---------------------------------------------------------------------------------------------


def build_offline(role: str, settings: Any = None) -> Any:
    """The offline engine of a role."""
    if role == "music":
        from .offline_music import OfflineMusic

        return OfflineMusic()
    if role == "writer":
        from .offline_writer import OfflineWriter

        return OfflineWriter()
    if role == "cover":
        from .offline_cover import OfflineCover

        return OfflineCover()
    if role == "stems":
        return None  # jobs.studio splits with the offline engines
    raise ValueError(f"unknown role {role!r}")


def build_real(role: str, settings: Any, device: str | None = None) -> Any:
    """The real engine of a role, loaded from MODEL_DIR (raises `ModelMissingError` if absent)."""
    from core.weights import model_dir, model_id, model_path, require_model

    device = device or engine_device(settings)
    path = require_model(settings, role)
    mid = model_id(settings, role)
    if role == "music":
        from .acestep import AceStepMusic

        return AceStepMusic(
            path,
            model_id=mid,
            device=device,
            offload=settings.ACESTEP_OFFLOAD,
            steps=settings.ACESTEP_STEPS,
            shift=settings.ACESTEP_SHIFT,
            guidance=settings.ACESTEP_GUIDANCE,
            vocal_language=settings.ACESTEP_LANGUAGE,
            vae_tiling=settings.ACESTEP_VAE_TILING,
            planner=build_planner(settings, device),
            styles_resident=settings.STYLE_ADAPTERS_RESIDENT,
        )
    if role == "writer":
        from .qwen import QwenWriter

        return QwenWriter(
            path,
            model_id=mid,
            device=device if settings.WRITER_DEVICE == "auto" else settings.WRITER_DEVICE,
            max_new_tokens=settings.WRITER_MAX_NEW_TOKENS,
            temperature=settings.WRITER_TEMPERATURE,
            top_p=settings.WRITER_TOP_P,
            dtype=settings.WRITER_DTYPE,
            cache=settings.WRITER_CACHE,
            prompt_lookup=settings.WRITER_PROMPT_LOOKUP,
        )
    if role == "cover":
        from .sdxl import SdxlCover

        return SdxlCover(
            path,
            model_id=mid,
            device=device,
            offload=settings.COVER_OFFLOAD,
            steps=settings.COVER_STEPS,
            size=settings.COVER_SIZE,
            safety_checker=(model_path(model_dir(settings), settings.COVER_SAFETY_CHECKER)
                            if settings.COVER_SAFETY_CHECKER else None),
        )
    if role == "stems":
        from .demucs_stems import DemucsStems

        return DemucsStems(
            path,
            model_id=mid,
            device=device,
            shifts=settings.STEMS_SHIFTS,
            overlap=settings.STEMS_OVERLAP,
        )
    raise ValueError(f"unknown role {role!r}")


def build_planner(settings: Any, device: str) -> Any:
    """ACE-Step's 5 Hz LM planner (`planner.Planner`) when ACESTEP_PLANNER names a model, else
    None; its folder under MODEL_DIR must be complete (`FileNotFoundError` otherwise: `flask
    models fetch` does not download it yet)."""
    from core.weights import missing_files, model_dir, model_path

    model = getattr(settings, "ACESTEP_PLANNER", None)
    if not model:
        return None
    from .planner import Planner

    path = model_path(model_dir(settings), model)
    missing = missing_files(path, "transformers")
    if missing:
        raise FileNotFoundError(
            f"ACESTEP_PLANNER={model!r}: the 5 Hz LM is not complete in {path}: missing {', '.join(missing[:8])}. "
            f"Download it into MODEL_DIR (huggingface-cli download {model} --local-dir MODEL_DIR/{model}) "
            f"or set ACESTEP_PLANNER=off.")
    return Planner(path, model_id=model, device=device)


def build_served_writer(settings: Any) -> Any:
    """The writer on the model server at WRITER_URL (an OpenAI-compatible chat-completions API)."""
    from .served_writer import ServedWriter

    return ServedWriter(
        settings.WRITER_URL,
        model=settings.WRITER_SERVED_MODEL or settings.WRITER_MODEL,
        api_key=settings.WRITER_API_KEY,
        timeout=settings.WRITER_TIMEOUT,
        retries=settings.WRITER_RETRIES,
        max_new_tokens=settings.WRITER_MAX_NEW_TOKENS,
        temperature=settings.WRITER_TEMPERATURE,
        top_p=settings.WRITER_TOP_P,
    )


def _vram(device: str) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None or not str(device).startswith("cuda"):
        return {}
    try:
        if not torch.cuda.is_available():
            return {}
        dev = torch.device(device)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return {
            "device": torch.cuda.get_device_name(index),
            "allocated": int(torch.cuda.memory_allocated(index)),
            "reserved": int(torch.cuda.memory_reserved(index)),
            "peak": int(torch.cuda.max_memory_allocated(index)),
            "total": int(torch.cuda.get_device_properties(index).total_memory),
        }
    except Exception:  # memory stats are informative only
        return {}


def load_engines(settings: Any, roles: tuple[str, ...] = ALL_ROLES) -> Engines:
    """Build the writer, music, cover and stems engines once, as ENGINE / ENGINE_<ROLE> choose.

    Music loads first (the largest model), then the writer, the cover and the stems. Logs, per role,
    real or offline and why, the load time and the VRAM in use; the same facts are on the
    returned `Engines` (`describe()`, `as_dict()`).
    """
    from core.weights import models_present

    built: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    seconds: dict[str, float] = {}
    device = None
    cuda_ok: tuple[bool, str] | None = None
    for role in ("music", "writer", "cover", "stems"):
        mode = role_mode(settings, role)
        if role not in roles:
            mode = "offline"
        engine = None
        started = time.monotonic()
        allocated_before = _vram(device).get("allocated", 0) if device else 0
        if mode == "offline":
            reasons[role] = f"{_mode_setting(settings, role)}=offline" if role in roles else "not requested"
        elif role == "writer" and getattr(settings, "WRITER_URL", None):
            # A served writer needs neither CUDA nor weights here; ENGINE_WRITER=offline still wins.
            engine = build_served_writer(settings)
            _, seen = engine.probe()
            reasons[role] = f"{_mode_setting(settings, role)}={mode} and WRITER_URL is set: served at {engine.url} ({seen})"
        elif mode == "real":
            device = device or engine_device(settings)
            engine = build_real(role, settings, device)
            reasons[role] = f"{_mode_setting(settings, role)}=real on {device}"
        else:  # auto
            if cuda_ok is None:
                cuda_ok = cuda_available()
            present, where = models_present(settings, role)
            if not cuda_ok[0]:
                reasons[role] = f"auto: {cuda_ok[1]}"
            elif not present:
                reasons[role] = f"auto: weights missing: {where}"
            else:
                device = device or engine_device(settings)
                try:
                    engine = build_real(role, settings, device)
                    reasons[role] = f"auto: {cuda_ok[1]} and {where}"
                except Exception as exc:  # fall back, loudly
                    if is_fatal_cuda_error(exc):
                        raise
                    log.exception("%s: the real engine failed to load; using the offline one", role)
                    reasons[role] = f"auto: real engine failed to load ({type(exc).__name__}: {exc})"
                    engine = None
                    torch = sys.modules.get("torch")
                    if torch is not None and is_cuda_oom(exc):
                        torch.cuda.empty_cache()
        if engine is None:
            engine = build_offline(role, settings)
        LOAD_COUNTS[role] += 1
        built[role] = engine
        seconds[role] = time.monotonic() - started
        vram = _vram(device) if device else {}
        if vram:
            taken = (vram.get("allocated", 0) - allocated_before) / 1024**3
            vram_note = f"; takes {taken:.1f} GiB, VRAM {_format_vram(vram)}"
        else:
            vram_note = ""
        log.info(
            "%s engine: %s (%s) in %.1f s — %s%s",
            role,
            _engine_name(engine),
            "offline" if getattr(engine, "offline", True) else "real",
            seconds[role],
            reasons[role],
            vram_note,
        )
    engines = Engines(
        writer=built["writer"],
        music=built["music"],
        cover=built["cover"],
        stems=built["stems"],
        reasons=reasons,
        load_seconds=seconds,
        vram=_vram(device) if device else {},
    )
    log.info("engines ready: %s", engines.describe())
    return engines
