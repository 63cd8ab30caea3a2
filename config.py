"""Settings from the environment (and an optional `.env` file), with safe defaults.

Every setting is documented in `.env.example`. `Config()` reads the environment when it is
instantiated, so tests can build apps with different settings in one process.

This is the one place settings are parsed: each attribute of a `Config` has its final type
(numbers, booleans, None for "not set", checked and lower-cased words), so the web app, the
worker and the engines read `settings.NAME` as it is. A malformed value raises `ConfigError`
naming the setting. Keyword overrides (tests, tools) replace values after the environment is
read; the engine modes and devices are checked and lower-cased after them as well.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent
load_dotenv(ROOT / ".env", override=False)


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message says which and what to do."""


def env_int(name: str, default: int) -> int:
    value = env_optional_int(name)
    return default if value is None else value


def env_float(name: str, default: float) -> float:
    value = env_optional_float(name)
    return default if value is None else value


def env_optional_int(name: str) -> int | None:
    """A whole number, or None when the setting is empty."""
    value = env(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a whole number") from None


def env_optional_float(name: str) -> float | None:
    """A number, or None when the setting is empty."""
    value = env(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a number") from None


ENGINE_MODES = ("auto", "real", "offline")
ENGINE_ROLE_SETTINGS = ("ENGINE_MUSIC", "ENGINE_WRITER", "ENGINE_COVER", "ENGINE_STEMS")
WRITER_CACHE_MODES = ("dynamic", "static")

# Model ids used when ACESTEP_MODEL / WRITER_MODEL / COVER_MODEL are empty (core.weights uses them too).
DEFAULT_ACESTEP_MODEL = "ACE-Step/acestep-v15-xl-turbo-diffusers"
DEFAULT_WRITER_MODEL = "Qwen/Qwen2-7B-Instruct"
DEFAULT_COVER_MODEL = "stabilityai/sdxl-turbo"
DEFAULT_COVER_SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"
# Demucs (stems): a folder named after the Demucs model under MODEL_DIR, and where its weights come from.
DEFAULT_STEMS_MODEL = "demucs/htdemucs"
DEFAULT_STEMS_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/demucs/"


def engine_mode(name: str, value: object, default: str | None) -> str | None:
    """ENGINE / ENGINE_<ROLE>: ``auto`` | ``real`` | ``offline`` lower-cased; empty gives `default`."""
    text = "" if value is None else str(value).strip().lower()
    if not text:
        return default
    if text not in ENGINE_MODES:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(ENGINE_MODES)}")
    return text


def lowered(value: object, default: str) -> str:
    """A word setting (a device, a dtype) lower-cased; empty gives `default`."""
    text = "" if value is None else str(value).strip().lower()
    return text or default


def checked_number(name: str, value: object, kind: type, minimum: float) -> int | float:
    """A number setting (from the environment or an override) as `kind`, at least `minimum`."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected a number") from None
    if number < minimum:
        raise ConfigError(f"{name}={value!r}: expected at least {minimum:g}")
    return number


def vae_tiling_mode(value: object) -> str:
    """ACESTEP_VAE_TILING: ``auto`` | ``on`` | ``off`` (true/false and their spellings mean on/off)."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "auto"):
        return "auto"
    if text in ("on", "true", "1", "yes"):
        return "on"
    if text in ("off", "false", "0", "no"):
        return "off"
    raise ConfigError(f"ACESTEP_VAE_TILING={value!r}: expected auto, on or off")


PLANNER_MODELS = ("ACE-Step/acestep-5Hz-lm-0.6B", "ACE-Step/acestep-5Hz-lm-1.7B", "ACE-Step/acestep-5Hz-lm-4B")


def planner_model(value: object) -> str | None:
    """ACESTEP_PLANNER: None for off (``off``, empty, ``false``, ``0``, ``no``, ``none``), else the
    5 Hz LM's model id (a folder under MODEL_DIR); a bare published name such as
    ``acestep-5Hz-lm-1.7B`` gets its ``ACE-Step/`` owner."""
    text = "" if value is None else str(value).strip()
    if text.lower() in ("", "off", "false", "0", "no", "none"):
        return None
    for model in PLANNER_MODELS:
        if text.lower() == model.split("/", 1)[1].lower():
            return model
    return text


def _dev_secret_key(var_dir: Path) -> str:
    """A random key kept under var/ so development sessions survive restarts."""
    path = var_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def parse_products(raw: str | None) -> dict[str, int]:
    """`POLAR_PRODUCTS`: JSON object or `id=credits,id=credits` -> {product_id: credits}."""
    if not raw:
        return {}
    raw = raw.strip()
    if raw.startswith("{"):
        return {str(k): int(v) for k, v in json.loads(raw).items()}
    out: dict[str, int] = {}
    for part in raw.split(","):
        if part.strip():
            pid, _, credits = part.partition("=")
            out[pid.strip()] = int(credits)
    return out


def blocklist(value: object, path: object = None) -> tuple[str, ...]:
    """LYRICS_BLOCKLIST (comma-separated words or phrases, or a list of them) plus the lines of
    LYRICS_BLOCKLIST_FILE (one word or phrase a line; `#` starts a comment): lower-cased, runs of
    whitespace collapsed, each once, in order."""
    raw = list(value) if isinstance(value, (list, tuple, set, frozenset)) else str(value or "").split(",")
    if path:
        try:
            lines = Path(str(path)).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"LYRICS_BLOCKLIST_FILE={str(path)!r}: cannot be read ({exc.strerror})") from None
        raw += [line.split("#", 1)[0] for line in lines]
    words = (" ".join(str(w).split()).lower() for w in raw)
    return tuple(dict.fromkeys(w for w in words if w))


class Config:
    def __init__(self, **overrides):
        self.ENV = env("TUNESMITH_ENV", "development")
        self.PRODUCTION = self.ENV == "production"
        self.VAR_DIR = Path(env("VAR_DIR", str(ROOT / "var")))

        secret = env("SECRET_KEY")
        if not secret:
            if self.PRODUCTION:
                raise ConfigError("SECRET_KEY is not set: production refuses to start without one "
                                  "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')")
            secret = _dev_secret_key(self.VAR_DIR)
        self.SECRET_KEY = secret

        self.DATABASE_URL = env("DATABASE_URL", f"sqlite:///{self.VAR_DIR / 'tunesmith.db'}")
        self.DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 10)
        # PostgreSQL's parallel workers per query for the web's sessions (-1: the server's own
        # max_parallel_workers_per_gather). 0: a page's short queries never start workers,
        # which cost more than they save and crowd the CPUs under concurrent requests.
        self.DATABASE_WEB_PARALLEL_WORKERS = env_int("DATABASE_WEB_PARALLEL_WORKERS", 0)
        self.REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.STORAGE_URL = env("STORAGE_URL", f"file://{self.VAR_DIR / 'storage'}")
        # Public base URL of the S3 endpoint as browsers reach it (presigned URLs are signed for it).
        self.STORAGE_PUBLIC_URL = env("STORAGE_PUBLIC_URL")
        self.SIGNED_URL_TTL = env_int("SIGNED_URL_TTL", 900)
        self.BASE_URL = env("BASE_URL")  # used for absolute links (Open Graph, Polar return URLs)

        # Sessions and cookies
        self.SESSION_COOKIE_NAME = "tunesmith_session"
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.SESSION_COOKIE_SECURE = env_bool("COOKIE_SECURE", self.PRODUCTION)
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SECURE = self.SESSION_COOKIE_SECURE
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        self.PREFERRED_URL_SCHEME = "https" if self.PRODUCTION else "http"
        self.MAX_CONTENT_LENGTH = env_int("MAX_CONTENT_LENGTH", 25 * 1024 * 1024)
        self.WTF_CSRF_TIME_LIMIT = None  # token valid for the session's life
        self.WTF_CSRF_HEADERS = ["X-CSRFToken"]

        # Rate limits (Flask-Limiter notation), stored in Redis so they hold across web workers.
        self.RATELIMIT_STORAGE_URI = env("RATELIMIT_STORAGE_URI", self.REDIS_URL)
        self.RATELIMIT_KEY_PREFIX = env("RATELIMIT_KEY_PREFIX", "tunesmith-rl")
        self.RATELIMIT_HEADERS_ENABLED = True
        # If Redis is briefly unreachable, limits fall back to this process's memory instead of failing requests.
        self.RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
        self.LOGIN_RATE_LIMIT = env("LOGIN_RATE_LIMIT", "10 per minute;100 per hour")
        self.LOGIN_ACCOUNT_RATE_LIMIT = env("LOGIN_ACCOUNT_RATE_LIMIT", "5 per minute;30 per hour")
        self.REGISTER_RATE_LIMIT = env("REGISTER_RATE_LIMIT", "5 per minute;30 per hour")
        self.CREATE_RATE_LIMIT = env("CREATE_RATE_LIMIT", "20 per minute")
        self.API_RATE_LIMIT = env("API_RATE_LIMIT", "60 per minute")
        self.FOLLOW_RATE_LIMIT = env("FOLLOW_RATE_LIMIT", "30 per minute;300 per hour")  # per account
        self.PROFILE_RATE_LIMIT = env("PROFILE_RATE_LIMIT", "10 per minute;60 per hour")  # profile saves, avatar uploads
        self.REPORT_RATE_LIMIT = env("REPORT_RATE_LIMIT", "10 per minute;50 per day")  # song reports per person

        # Credits
        self.NEW_USER_CREDITS = env_int("NEW_USER_CREDITS", 100)

        # Generation
        self.DEFAULT_DURATION = env_int("DEFAULT_DURATION", 60)
        self.MIN_DURATION = env_int("MIN_DURATION", 10)
        self.MAX_DURATION = env_int("MAX_DURATION", 240)
        self.DEFAULT_VARIANTS = env_int("DEFAULT_VARIANTS", 2)
        self.MAX_VARIANTS = env_int("MAX_VARIANTS", 4)
        self.QUEUE_NAME = env("QUEUE_NAME", "default")
        self.HIGH_QUEUE_NAME = env("HIGH_QUEUE_NAME", "high")  # paying users' work, served first
        self.HIGH_QUEUE_BURST = env_int("HIGH_QUEUE_BURST", 4)  # then one default job goes first
        self.MAX_RUNNING_PER_USER = env_int("MAX_RUNNING_PER_USER", 1)
        self.JOB_TIMEOUT_BASE = env_int("JOB_TIMEOUT_BASE", 300)  # seconds, plus per second of audio
        self.JOB_TIMEOUT_PER_SECOND = env_float("JOB_TIMEOUT_PER_SECOND", 3.0)
        self.RECONCILE_INTERVAL = env_int("RECONCILE_INTERVAL", 10)
        # A worker whose songs' heartbeat is older than this is dead: its generation runs again.
        self.WORKER_DEATH_SECONDS = env_int("WORKER_DEATH_SECONDS", 45)
        self.JOB_ATTEMPTS = env_int("JOB_ATTEMPTS", 3)  # runs of one generation before it fails
        self.WORKER_DB_RETRY_SECONDS = env_int("WORKER_DB_RETRY_SECONDS", 60)  # a job's writes ride out an outage
        self.WORKER_OVERLAP = env_bool("WORKER_OVERLAP", True)  # encode/upload beside the next job's GPU work
        self.STORAGE_SWEEP_INTERVAL = env_int("STORAGE_SWEEP_INTERVAL", 3600)  # 0: only `flask storage sweep`
        self.STORAGE_SWEEP_GRACE = env_int("STORAGE_SWEEP_GRACE", 3600)  # orphans younger than this stay
        self.WORKER_HEARTBEAT_TTL = env_int("WORKER_HEARTBEAT_TTL", 60)
        # The queues a worker serves, in order (comma-separated; `--queue` overrides). Empty: high,
        # default and the style-training queue, so the embedded default trains styles too; a
        # fleet serves STYLE_TRAIN_QUEUE on its own workers (WORKER_QUEUES=high,default elsewhere).
        self.WORKER_QUEUES = env("WORKER_QUEUES", "")

        # Styles (/styles): training a LoRA adapter (or the offline engine's bias) from a person's songs
        self.STYLE_TRAIN_CREDITS = env_int("STYLE_TRAIN_CREDITS", 20)
        self.STYLE_MIN_SONGS = env_int("STYLE_MIN_SONGS", 4)
        self.STYLE_MAX_SONGS = env_int("STYLE_MAX_SONGS", 30)
        self.STYLE_LORA_RANK = env_int("STYLE_LORA_RANK", 8)
        self.STYLE_LORA_ALPHA = env_int("STYLE_LORA_ALPHA", 16)
        self.STYLE_TRAIN_STEPS = env_int("STYLE_TRAIN_STEPS", 200)
        self.STYLE_LEARNING_RATE = env_float("STYLE_LEARNING_RATE", 1e-4)
        self.STYLE_ADAPTERS_RESIDENT = env_int("STYLE_ADAPTERS_RESIDENT", 4)  # adapters kept loaded (LRU)
        self.STYLE_TRAIN_QUEUE = env("STYLE_TRAIN_QUEUE", "train")
        self.STYLE_TRAIN_TIMEOUT = env_int("STYLE_TRAIN_TIMEOUT", 3600)  # seconds a training job may run

        # Engines (the mode and device words are checked and lower-cased by `_finish`)
        self.ENGINE = env("ENGINE", "auto")  # auto | real | offline
        self.ENGINE_MUSIC = env("ENGINE_MUSIC")  # None: follow ENGINE
        self.ENGINE_WRITER = env("ENGINE_WRITER")
        self.ENGINE_COVER = env("ENGINE_COVER")
        self.ENGINE_STEMS = env("ENGINE_STEMS")  # None: follow ENGINE
        self.MODEL_DIR = env("MODEL_DIR", str(self.VAR_DIR / "models"))
        self.ACESTEP_MODEL = env("ACESTEP_MODEL", DEFAULT_ACESTEP_MODEL)
        self.WRITER_MODEL = env("WRITER_MODEL", DEFAULT_WRITER_MODEL)
        self.COVER_MODEL = env("COVER_MODEL", DEFAULT_COVER_MODEL)
        self.WRITER_DEVICE = env("WRITER_DEVICE", "auto")  # auto | cuda | cpu
        self.COVER_OFFLOAD = env_bool("COVER_OFFLOAD", False)
        self.ENGINE_DEVICE = env("ENGINE_DEVICE", "auto")  # auto | cuda | cuda:1 | cpu
        self.WRITER_DTYPE = env("WRITER_DTYPE", "auto")  # auto | bfloat16 | float16 | float32
        self.ACESTEP_OFFLOAD = env_bool("ACESTEP_OFFLOAD", False)
        self.ACESTEP_VAE_TILING = env("ACESTEP_VAE_TILING", "auto")  # auto | on | off (checked by `_finish`)
        self.ACESTEP_STEPS = env_optional_int("ACESTEP_STEPS")  # None: the checkpoint's default
        self.ACESTEP_SHIFT = env_optional_float("ACESTEP_SHIFT")  # None: the checkpoint's default
        self.ACESTEP_GUIDANCE = env_optional_float("ACESTEP_GUIDANCE")  # None: the checkpoint's default
        self.ACESTEP_LANGUAGE = env("ACESTEP_LANGUAGE", "en")
        # ACE-Step's 5 Hz LM planner: off (default, until measured on a GPU) | its model id (`_finish`)
        self.ACESTEP_PLANNER = env("ACESTEP_PLANNER", "off")
        self.WRITER_MAX_NEW_TOKENS = env_int("WRITER_MAX_NEW_TOKENS", 1536)
        self.WRITER_TEMPERATURE = env_float("WRITER_TEMPERATURE", 0.7)
        self.WRITER_TOP_P = env_float("WRITER_TOP_P", 0.8)
        self.WRITER_CACHE = env("WRITER_CACHE", "dynamic")  # dynamic | static (KV cache of the in-process writer)
        self.WRITER_PROMPT_LOOKUP = env_int("WRITER_PROMPT_LOOKUP", 0)  # prompt-lookup decoding tokens; 0 = off
        # The writer on a model server (OpenAI-compatible chat completions); empty = in this process.
        self.WRITER_URL = env("WRITER_URL")  # e.g. http://llm:8000/v1
        self.WRITER_API_KEY = env("WRITER_API_KEY")
        self.WRITER_SERVED_MODEL = env("WRITER_SERVED_MODEL")  # None: WRITER_MODEL (set by `_finish`)
        self.WRITER_TIMEOUT = env_float("WRITER_TIMEOUT", 60.0)  # seconds per request to WRITER_URL
        self.WRITER_RETRIES = env_int("WRITER_RETRIES", 2)  # further requests, with back-off, when it fails
        self.COVER_STEPS = env_int("COVER_STEPS", 1)
        self.COVER_SIZE = env_int("COVER_SIZE", 512)
        # The cover NSFW filter: a StableDiffusionSafetyChecker under MODEL_DIR; "off" = none (`_finish`).
        self.COVER_SAFETY_CHECKER = env("COVER_SAFETY_CHECKER", DEFAULT_COVER_SAFETY_CHECKER)
        # Stems (Demucs, jobs/engines/demucs_stems.py)
        self.STEMS_MODEL = env("STEMS_MODEL", DEFAULT_STEMS_MODEL)  # htdemucs | htdemucs_6s | htdemucs_ft
        self.STEMS_SHIFTS = env_int("STEMS_SHIFTS", 1)  # random-shift passes averaged (Demucs --shifts)
        self.STEMS_OVERLAP = env_float("STEMS_OVERLAP", 0.25)  # overlap of the segments (Demucs --overlap)
        self.STEMS_WEIGHTS_URL = env("STEMS_WEIGHTS_URL", DEFAULT_STEMS_WEIGHTS_URL)  # `flask models fetch`

        # Polar billing
        self.POLAR_ACCESS_TOKEN = env("POLAR_ACCESS_TOKEN")
        self.POLAR_WEBHOOK_SECRET = env("POLAR_WEBHOOK_SECRET")
        self.POLAR_SERVER = env("POLAR_SERVER", "sandbox")  # sandbox | production
        self.POLAR_API_URL = env("POLAR_API_URL")
        self.POLAR_PRODUCTS = parse_products(env("POLAR_PRODUCTS"))

        # Mail: SMTP (smtp://user:pass@host:587?starttls=1, smtps://... for TLS from the start);
        # unset = every mail is written as an .eml file under VAR_DIR/mail/ (and the log says so).
        self.SMTP_URL = env("SMTP_URL")
        self.SMTP_TIMEOUT = env_float("SMTP_TIMEOUT", 10.0)
        self.MAIL_FROM = env("MAIL_FROM", "Tunesmith <tunesmith@localhost>")
        # Accounts: recovery, confirmation, two-factor, deletion and export
        self.REQUIRE_EMAIL_VERIFICATION = env_bool("REQUIRE_EMAIL_VERIFICATION", False)
        self.ADMIN_REQUIRE_2FA = env_bool("ADMIN_REQUIRE_2FA", False)
        self.RESET_TOKEN_TTL = env_int("RESET_TOKEN_TTL", 3600)  # seconds a password-reset link works
        self.VERIFY_TOKEN_TTL = env_int("VERIFY_TOKEN_TTL", 48 * 3600)  # an address-confirmation link
        self.EXPORT_LINK_TTL = env_int("EXPORT_LINK_TTL", 7 * 24 * 3600)  # a data export's download link
        self.FORGOT_RATE_LIMIT = env("FORGOT_RATE_LIMIT", "5 per minute;20 per hour")
        self.FORGOT_ACCOUNT_RATE_LIMIT = env("FORGOT_ACCOUNT_RATE_LIMIT", "3 per hour")
        self.ACCOUNT_MAIL_RATE_LIMIT = env("ACCOUNT_MAIL_RATE_LIMIT", "5 per hour")  # resends, exports
        # Security headers: HSTS max-age when served over HTTPS (0 = no HSTS header).
        self.HSTS_SECONDS = env_int("HSTS_SECONDS", 31536000)

        # API: server-sent events (GET /api/v1/generations/<id>/events)
        self.SSE_POLL_INTERVAL = env_float("SSE_POLL_INTERVAL", 1.0)  # seconds between database reads
        self.SSE_MAX_SECONDS = env_float("SSE_MAX_SECONDS", 300.0)  # a stream ends after this; clients reconnect
        self.SSE_KEEPALIVE_SECONDS = env_float("SSE_KEEPALIVE_SECONDS", 15.0)
        # Outbound webhooks (/settings/webhooks), delivered by the worker (core/webhooks.py)
        self.ALLOW_PRIVATE_WEBHOOKS = env_bool("ALLOW_PRIVATE_WEBHOOKS", False)  # loopback/private targets
        self.WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 10.0)  # seconds per delivery attempt
        self.WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 10)  # first try + retries (about a day)
        self.WEBHOOK_RETRY_BASE = env_float("WEBHOOK_RETRY_BASE", 60.0)  # first retry after; x3 each time
        self.WEBHOOK_RETRY_MAX = env_float("WEBHOOK_RETRY_MAX", 6 * 3600.0)  # the longest wait between tries
        # An endpoint is disabled after this many failed attempts in a row spanning at least
        # WEBHOOK_DISABLE_SECONDS (no success in between).
        self.WEBHOOK_DISABLE_AFTER = env_int("WEBHOOK_DISABLE_AFTER", 15)
        self.WEBHOOK_DISABLE_SECONDS = env_float("WEBHOOK_DISABLE_SECONDS", 24 * 3600.0)
        self.WEBHOOK_POLL_INTERVAL = env_float("WEBHOOK_POLL_INTERVAL", 2.0)  # the worker's delivery loop
        self.WEBHOOK_MAX_ENDPOINTS = env_int("WEBHOOK_MAX_ENDPOINTS", 10)  # per person

        # Moderation: words or phrases (whole words, any case) refused in what people submit.
        self.LYRICS_BLOCKLIST = env("LYRICS_BLOCKLIST", "")  # comma-separated; a tuple after `_finish`
        self.LYRICS_BLOCKLIST_FILE = env("LYRICS_BLOCKLIST_FILE")  # one a line, added to the list

        self.TRUSTED_PROXIES = env_int("TRUSTED_PROXIES", 0)
        self.FEED_CACHE_SECONDS = env_float("FEED_CACHE_SECONDS", 30.0)  # Trending/sections rankings
        # The worker's reconciler recomputes the feed's rankings this often (0: only `flask feed refresh`).
        self.FEED_REFRESH_SECONDS = env_float("FEED_REFRESH_SECONDS", 60.0)
        # Search ranks at most this many of the newest matches (plus as many title matches):
        # a word in nearly every song costs the same as one in a thousand (core/search.py).
        self.SEARCH_CANDIDATES = env_int("SEARCH_CANDIDATES", 1000)
        # PostgreSQL: the worker keeps text indexes of the newest 20,000, 40,000, ... public songs
        # (search's tiers), so a common word costs the same in a million songs (0: none).
        self.SEARCH_TIER_START = env_int("SEARCH_TIER_START", 20000)
        self.METRICS_TOKEN = env("METRICS_TOKEN")  # when set, /metrics needs it as a bearer token
        self.METRICS_PREFIX = env("METRICS_PREFIX", "tunesmith:metrics")
        self.READY_CHECK_TIMEOUT = env_float("READY_CHECK_TIMEOUT", 3.0)
        self.LOG_LEVEL = env("LOG_LEVEL", "INFO")
        self.TESTING = False

        for key, value in overrides.items():
            setattr(self, key, value)
        self._finish()

    def _finish(self) -> None:
        """Check and normalise the word settings the engines compare, whether they came from the
        environment or an override: ENGINE / ENGINE_<ROLE> must be auto, real or offline
        (``ConfigError`` naming the setting otherwise); devices and the writer dtype are lower-cased;
        the writer's cache mode and numbers are checked; WRITER_SERVED_MODEL defaults to WRITER_MODEL."""
        self.ENGINE = engine_mode("ENGINE", self.ENGINE, "auto")
        for name in ENGINE_ROLE_SETTINGS:
            setattr(self, name, engine_mode(name, getattr(self, name), None))
        self.ENGINE_DEVICE = lowered(self.ENGINE_DEVICE, "auto")
        self.WRITER_DEVICE = lowered(self.WRITER_DEVICE, "auto")
        self.WRITER_DTYPE = lowered(self.WRITER_DTYPE, "auto")
        self.ACESTEP_VAE_TILING = vae_tiling_mode(self.ACESTEP_VAE_TILING)
        self.ACESTEP_PLANNER = planner_model(self.ACESTEP_PLANNER)
        if str(self.COVER_SAFETY_CHECKER or "").strip().lower() in ("", "off", "none", "false", "0"):
            self.COVER_SAFETY_CHECKER = None
        self.STEMS_SHIFTS = checked_number("STEMS_SHIFTS", self.STEMS_SHIFTS, int, 0)
        self.STEMS_OVERLAP = checked_number("STEMS_OVERLAP", self.STEMS_OVERLAP, float, 0)
        if self.STEMS_OVERLAP >= 1:
            raise ConfigError(f"STEMS_OVERLAP={self.STEMS_OVERLAP!r}: expected less than 1")
        self.WRITER_CACHE = lowered(self.WRITER_CACHE, "dynamic")
        if self.WRITER_CACHE not in WRITER_CACHE_MODES:
            raise ConfigError(f"WRITER_CACHE={self.WRITER_CACHE!r}: expected one of {', '.join(WRITER_CACHE_MODES)}")
        self.WRITER_PROMPT_LOOKUP = checked_number("WRITER_PROMPT_LOOKUP", self.WRITER_PROMPT_LOOKUP, int, 0)
        self.WRITER_RETRIES = checked_number("WRITER_RETRIES", self.WRITER_RETRIES, int, 0)
        self.WRITER_TIMEOUT = checked_number("WRITER_TIMEOUT", self.WRITER_TIMEOUT, float, 0.001)
        self.WRITER_URL = (str(self.WRITER_URL).strip() or None) if self.WRITER_URL else None
        self.WRITER_SERVED_MODEL = self.WRITER_SERVED_MODEL or self.WRITER_MODEL
        self.LYRICS_BLOCKLIST = blocklist(self.LYRICS_BLOCKLIST, self.LYRICS_BLOCKLIST_FILE)


class TestConfig(Config):
    """Settings for the test suite: real services, isolated names, generous rate limits."""

    def __init__(self, **overrides):
        redis_url = env("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        queue = f"test-{secrets.token_hex(4)}"
        testing = dict(
            TESTING=True,
            ENV="testing",
            SECRET_KEY="test-secret-key-not-for-production",
            DATABASE_URL=env("TEST_DATABASE_URL", "sqlite:///:memory:"),
            REDIS_URL=redis_url,
            RATELIMIT_STORAGE_URI=redis_url,
            RATELIMIT_KEY_PREFIX=f"test-rl-{secrets.token_hex(4)}",
            # The limits' own Redis prefix too: `limiter.reset()` deletes every key under it, and other
            # test sessions share this Redis database.
            RATELIMIT_STORAGE_OPTIONS={"key_prefix": f"test-limits-{queue}"},
            LOGIN_RATE_LIMIT="1000 per minute",
            LOGIN_ACCOUNT_RATE_LIMIT="1000 per minute",
            REGISTER_RATE_LIMIT="1000 per minute",
            CREATE_RATE_LIMIT="1000 per minute",
            API_RATE_LIMIT="1000 per minute",
            FOLLOW_RATE_LIMIT="1000 per minute",
            PROFILE_RATE_LIMIT="1000 per minute",
            FORGOT_RATE_LIMIT="1000 per minute",
            FORGOT_ACCOUNT_RATE_LIMIT="1000 per minute",
            ACCOUNT_MAIL_RATE_LIMIT="1000 per minute",
            ALLOW_PRIVATE_WEBHOOKS=True,  # the tests receive webhooks on loopback
            ENGINE="offline",
            FEED_CACHE_SECONDS=0.0,
            QUEUE_NAME=queue,
            HIGH_QUEUE_NAME=f"{queue}-high",
            STYLE_TRAIN_QUEUE=f"{queue}-train",
            METRICS_PREFIX=f"tunesmith:metrics:{queue}",
        )
        # The test values, then the caller's, are overrides: `_finish` checks the result once.
        super().__init__(**{**testing, **overrides})
