"""ACE-Step 1.5's 5 Hz LM planner ("thinking"): metadata and audio codes for the DiT.

Upstream ACE-Step 1.5 runs a Qwen3-based causal LM (``acestep-5Hz-lm-0.6B`` / ``-1.7B`` /
``-4B``) before the DiT, in two phases (`acestep/llm_inference.py`,
``LLMHandler.generate_with_stop_condition``):

1. **CoT** (chain of thought), once for all of a request's variants: the chat prompt
   ``# Caption / # Lyric`` under the system message ``# Instruction\\n<DEFAULT_LM_INSTRUCTION>``
   (`build_formatted_prompt`), decoded under `constrained_logits_processor.py`'s state machine
   into ``<think>\\nbpm: ..\\ncaption: ..\\nduration: ..\\nkeyscale: ..\\nlanguage: ..\\n
   timesignature: ..\\n</think>`` (genres skipped, as upstream does by default): bpm 30-300,
   duration 10-600, keyscale one of the 70 ``VALID_KEYSCALES``, language one of
   ``VALID_LANGUAGES``, time signature 2/3/4/6; values the person gave are injected as
   ``" {value}\\n"`` instead of sampled. When bpm, key, time signature and duration are all given
   upstream skips this phase (`has_all_metas`) and so does this module.
2. **Codes**, batched over the variants (one seed each): the same prompt with the metadata as the
   assistant's ``<think>`` YAML (`_format_metadata_as_cot`, `build_formatted_prompt_with_cot`),
   decoded with only ``<|audio_code_N|>`` tokens allowed (N in 0..63999, ``MAX_AUDIO_CODE``),
   5 codes per second of the target duration.

Both phases use upstream's defaults (`acestep/inference.py` ``GenerationParams``): temperature
0.85, top-p 0.9, no top-k, LM classifier-free guidance 2.0 against the unconditional prompts of
`_build_unconditional_prompt` (phase 1: the lyrics only; phase 2: an empty ``<think>``).

What differs from upstream, on purpose or by necessity (see also docs/engines.md):

- The token-level state machine is re-implemented here, smaller: fixed strings are fed as
  tokens rather than whitelisted one token at a time; an enumerated value (bpm, duration,
  keyscale, language, time signature) is sampled from a trie of its candidates' token ids, each
  candidate tokenized as ``" <value>"`` (upstream tokenizes ``"<field>: <value>"`` and strips
  the field's tokens, which gives the same ids for a byte-level BPE tokenizer); the caption is
  free text without audio-code or other added tokens, ended by the first token holding a newline
  (upstream also accepts YAML continuation lines) or after 512 tokens.
- The code count is ``ceil(duration * 5)`` (upstream: ``int(duration * 5)``): the DiT's latent
  length is the code count times its pool window (5 at 25 Hz), and the engine trims the audio to
  the asked length, so rounding up never leaves a song short.
- The codes of every variant are decoded in one batch (upstream's PyTorch backend loops over
  them; its vLLM backend batches).

Importing this module does not import torch (the engines load it inside `Planner`).
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .acestep import VOCAL_LANGUAGES

log = logging.getLogger(__name__)

# ---- upstream acestep/constants.py and constrained_logits_processor.py
DEFAULT_LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
MAX_AUDIO_CODE = 63999  # codebook size 64000
CODES_PER_SECOND = 5
BPM_RANGE = (30, 300)
DURATION_RANGE = (10, 600)
TIME_SIGNATURES = ("2", "3", "4", "6")
KEYSCALES = tuple(sorted(f"{note}{acc} {mode}" for note in "ABCDEFG" for acc in ("", "#", "b", "♯", "♭")
                         for mode in ("major", "minor")))
LANGUAGES = tuple(sorted(VOCAL_LANGUAGES))  # upstream VALID_LANGUAGES, "unknown" included
FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")  # the CoT's order
CAPTION_MAX_TOKENS = 512
# upstream GenerationParams defaults (lm_temperature, lm_top_p, lm_top_k, lm_cfg_scale)
TEMPERATURE, TOP_P, TOP_K, CFG_SCALE = 0.85, 0.9, None, 2.0

_CODE_TOKEN = re.compile(r"^<\|audio_code_(\d+)\|>$")


def audio_code_string(codes: list[int]) -> str:
    """Codes as the DiT takes them (diffusers' ``audio_codes``): ``<|audio_code_N|>...``."""
    return "".join(f"<|audio_code_{c}|>" for c in codes)


def cot_text(metadata: dict[str, Any]) -> str:
    """upstream `_format_metadata_as_cot`: the metadata as sorted YAML inside ``<think>``."""
    import yaml

    items: dict[str, Any] = {}
    for key in FIELDS:
        value = metadata.get(key)
        if value is None:
            continue
        if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[key] = value
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"<think>\n{body}\n</think>"


@dataclass
class Plan:
    """What the planner decided for one request's variants."""

    metadata: dict[str, Any]  # bpm (int), caption, duration (int), keyscale, language, timesignature ("4")
    codes: list[list[int]]  # per variant, values in 0..MAX_AUDIO_CODE
    cot: str = ""  # the <think> block the codes were conditioned on
    generated: tuple[str, ...] = ()  # the metadata fields the LM chose (the rest were given)
    seconds: dict[str, float] = field(default_factory=dict)  # cot, codes

    @property
    def audio_codes(self) -> list[str]:
        """Per variant, the code string diffusers' `AceStepPipeline(audio_codes=...)` parses."""
        return [audio_code_string(c) for c in self.codes]

    def get(self, key: str) -> Any:
        return self.metadata.get(key)


class _Trie:
    """Token-id prefix tree of a field's candidate values."""

    def __init__(self, sequences: dict[str, list[int]]):
        self.root: dict = {}
        for value, ids in sequences.items():
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})
            node[None] = value  # a complete value ends here


class Planner:
    """The 5 Hz LM, loaded once per worker (transformers, ``local_files_only``).

    Args:
        path: the LM folder (``config.json``, weights, tokenizer with the ``<|audio_code_N|>``
            tokens).
        model / tokenizer: an already loaded causal LM and tokenizer (`path` is then not read).
        device: ``"cuda"``, ``"cuda:1"`` or ``"cpu"``; bf16 on CUDA, float32 on CPU.
        temperature / top_p / top_k / cfg_scale: sampling, upstream's defaults.
        caption_max_tokens: the longest rewritten caption (upstream: 512).
    """

    def __init__(self, path: str | Path | None = None, *, model: Any = None, tokenizer: Any = None,
                 model_id: str | None = None, device: str = "cuda", temperature: float = TEMPERATURE,
                 top_p: float | None = TOP_P, top_k: int | None = TOP_K, cfg_scale: float = CFG_SCALE,
                 caption_max_tokens: int = CAPTION_MAX_TOKENS) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if path is None and model is None:
            raise ValueError("Planner needs a model folder or a model")
        self.path = Path(path) if path is not None else None
        self.model_id = model_id or (self.path.name if self.path else "5Hz-lm")
        self.name = self.model_id
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        started = time.monotonic()
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=self.dtype, local_files_only=True)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.temperature, self.top_p, self.top_k = float(temperature), top_p, top_k
        self.cfg_scale = float(cfg_scale)
        self.caption_max_tokens = int(caption_max_tokens)

        # upstream `_precompute_audio_code_tokens`: tokens spelled <|audio_code_N|>, N <= 63999
        # transformers 5.x renames the forward's `past_key_values` to `cache`: use what it takes
        import inspect

        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.code_of: dict[int, int] = {}
        token_ids = tokenizer.get_vocab()
        for text, tid in token_ids.items():
            m = _CODE_TOKEN.match(text)
            if m and int(m.group(1)) <= MAX_AUDIO_CODE:
                self.code_of[tid] = int(m.group(1))
        if not self.code_of:
            raise ValueError(f"{self.model_id}: the tokenizer has no <|audio_code_N|> tokens: not a 5 Hz LM")
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.vocab_size = vocab
        code_ids = torch.tensor(sorted(self.code_of), dtype=torch.long)
        self._code_ids = code_ids.to(self.device)
        self._code_values = torch.tensor([self.code_of[int(t)] for t in code_ids], dtype=torch.long,
                                         device=self.device)
        # the caption is free text: no added token (audio codes, <think>, chat markers, EOS)
        blocked = torch.zeros(vocab, dtype=torch.bool)
        for tid in list(getattr(tokenizer, "added_tokens_decoder", {}) or {}) + list(tokenizer.all_special_ids):
            if 0 <= int(tid) < vocab:
                blocked[int(tid)] = True
        blocked[code_ids] = True  # upstream blocks the audio codes in the caption explicitly
        blocked[len(tokenizer):] = True  # padding rows of the embedding matrix
        self._caption_allowed = torch.nonzero(~blocked).flatten().to(self.device)
        free = set(torch.nonzero(~blocked).flatten().tolist())
        self._newline_set = {tid for text, tid in token_ids.items()
                             if tid in free and "\n" in tokenizer.convert_tokens_to_string([text])}
        self._tries = {
            "bpm": self._trie(str(v) for v in range(BPM_RANGE[0], BPM_RANGE[1] + 1)),
            "duration": self._trie(str(v) for v in range(DURATION_RANGE[0], DURATION_RANGE[1] + 1)),
            "keyscale": self._trie(KEYSCALES),
            "language": self._trie(LANGUAGES),
            "timesignature": self._trie(TIME_SIGNATURES),
        }
        self.load_seconds = time.monotonic() - started
        self.plans = 0
        log.info("planner %s loaded on %s in %.1f s (%d audio-code tokens)", self.model_id, self.device,
                 self.load_seconds, len(self.code_of))

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "device": str(self.device), "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "cfg_scale": self.cfg_scale}

    # ------------------------------------------------------------------ prompts (upstream)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _trie(self, values) -> _Trie:
        values = list(values)
        ids = self.tokenizer([f" {v}" for v in values], add_special_tokens=False)["input_ids"]
        return _Trie(dict(zip(values, ids)))

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def cot_prompt(self, caption: str, lyrics: str, *, negative: bool = False) -> str:
        """upstream `build_formatted_prompt` (phase 1); `negative`: the unconditional prompt."""
        user = f"# Lyric\n{lyrics}\n" if negative else f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"
        return self._chat([{"role": "system", "content": f"# Instruction\n{DEFAULT_LM_INSTRUCTION}\n\n"},
                           {"role": "user", "content": user}], True)

    def codes_prompt(self, caption: str, lyrics: str, cot: str, *, negative: bool = False) -> str:
        """upstream `build_formatted_prompt_with_cot` (phase 2): the CoT as the assistant's turn."""
        text = self._chat([{"role": "system", "content": f"# Instruction\n{DEFAULT_LM_INSTRUCTION}\n\n"},
                           {"role": "user", "content": f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"},
                           {"role": "assistant", "content": "<think>\n</think>" if negative else cot}], False)
        return text if text.endswith("\n") else text + "\n"

    # ------------------------------------------------------------------ the plan

    def plan(self, requests: Any, *, caption: str | None = None, lyrics: str | None = None,
             language: str | None = None) -> Plan:
        """Metadata and audio codes for one request's variants (a `MusicRequest` or a list of
        them, sharing caption, lyrics and duration; one seed each).

        `caption` / `lyrics` default to the first request's tags and lyrics; `language` (a code
        from upstream's list, or "unknown") is injected like the other given fields. A request's
        bpm, key, time signature and duration are given fields; the LM fills the rest. As upstream,
        given values are injected as they are (whole seconds, whole bpm), not checked against the
        ranges the LM's own choices are held to."""
        batch = list(requests) if isinstance(requests, (list, tuple)) else [requests]
        if not batch:
            raise ValueError("nothing to plan")
        first = batch[0]
        caption = (caption if caption is not None else first.tags or "").strip()
        lyrics = (lyrics if lyrics is not None else first.lyrics or "").strip()
        duration = float(first.duration)
        given: dict[str, str] = {}
        if first.bpm:
            given["bpm"] = str(int(first.bpm))
        if (first.key or "").strip():
            given["keyscale"] = first.key.strip()
        ts = _time_signature(first.time_signature)
        if ts:
            given["timesignature"] = ts
        given["duration"] = str(int(duration))
        if language:
            given["language"] = language
        seconds: dict[str, float] = {}
        started = time.monotonic()
        generated: tuple[str, ...] = ()
        if all(k in given for k in ("bpm", "keyscale", "timesignature", "duration")):
            metadata: dict[str, Any] = dict(given)  # upstream has_all_metas: no CoT phase
        else:
            seed = int(first.seed) % (2**63)
            metadata = self._cot(caption, lyrics, given, seed)
            generated = tuple(k for k in FIELDS if k in metadata and k not in given)
        seconds["cot"] = time.monotonic() - started
        for key in ("bpm", "duration"):
            if key in metadata:
                metadata[key] = int(metadata[key])
        cot = cot_text(metadata)
        started = time.monotonic()
        n_codes = max(1, math.ceil(duration * CODES_PER_SECOND))
        seeds = [int(r.seed) % (2**63) for r in batch]
        codes = self._codes(caption, lyrics, cot, n_codes, seeds)
        seconds["codes"] = time.monotonic() - started
        self.plans += 1
        log.info("planned %d variant(s): %d codes each, %s (LM chose %s) in %.1f s + %.1f s", len(batch), n_codes,
                 {k: metadata[k] for k in FIELDS if k in metadata and k != "caption"},
                 ", ".join(generated) or "nothing",
                 seconds["cot"], seconds["codes"])
        return Plan(metadata=metadata, codes=codes, cot=cot, generated=generated, seconds=seconds)

    # ------------------------------------------------------------------ decoding

    def _start(self, cond: list[str], uncond: list[str] | None) -> "_Rows":
        return _Rows(self, cond, uncond if self.cfg_scale > 1.0 else None)

    def _pick(self, logits, allowed, generators):
        """upstream's order: constraint mask, top-k, top-p, then temperature sampling. Tokens
        outside `allowed` (token ids) are masked, so the filters run on the allowed columns only
        (the same result, cheaper)."""
        import torch

        scores = logits.float()
        if allowed is not None:
            scores = scores[:, allowed]
        if self.top_k:
            kth = torch.topk(scores, min(int(self.top_k), scores.shape[-1]))[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None and 0.0 < self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cum = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1)
            remove = cum > self.top_p
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        if self.temperature <= 0:
            picked = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            picked = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
        return allowed[picked] if allowed is not None else picked

    def _generators(self, seeds: list[int]):
        import torch

        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def _cot(self, caption: str, lyrics: str, given: dict[str, str], seed: int) -> dict[str, Any]:
        """Phase 1 for one row (upstream decodes the CoT once for all variants)."""
        import torch

        rows = self._start([self.cot_prompt(caption, lyrics)], [self.cot_prompt(caption, lyrics, negative=True)])
        gens = self._generators([seed])
        newline = self._encode("\n")
        rows.feed(self._encode("<think>") + newline)
        metadata: dict[str, Any] = {}
        for key in FIELDS:
            rows.feed(self._encode(f"{key}:"))
            if key in given:
                rows.feed(self._encode(f" {given[key]}\n"))
                metadata[key] = given[key]
                continue
            if key == "caption":
                ids: list[int] = []
                allowed = self._caption_allowed
                for _ in range(self.caption_max_tokens):
                    tid = int(self._pick(rows.logits(), allowed, gens)[0])
                    rows.feed([tid])
                    ids.append(tid)
                    if tid in self._newline_set:
                        break
                else:
                    rows.feed(newline)
                text = self.tokenizer.decode(ids, skip_special_tokens=False).split("\n")[0].strip()
                if text:
                    metadata[key] = text
                continue
            node = self._tries[key].root
            while True:
                children = [t for t in node if t is not None]
                if not children:  # a complete value with no longer one
                    rows.feed(newline)
                    break
                options = children + (newline[:1] if None in node else [])
                tid = int(self._pick(rows.logits(), torch.tensor(options, device=self.device), gens)[0])
                rows.feed([tid])
                if None in node and tid == newline[0] and tid not in node:
                    if len(newline) > 1:
                        rows.feed(newline[1:])
                    break
                node = node[tid]
            metadata[key] = node[None]
        rows.feed(self._encode("</think>"))
        return metadata

    def _codes(self, caption: str, lyrics: str, cot: str, n_codes: int, seeds: list[int]) -> list[list[int]]:
        """Phase 2, batched over the variants: only audio-code tokens, `n_codes` of them."""
        import torch

        n = len(seeds)
        rows = self._start([self.codes_prompt(caption, lyrics, cot)] * n,
                           [self.codes_prompt(caption, lyrics, cot, negative=True)] * n)
        gens = self._generators(seeds)
        out = []
        for step in range(n_codes):
            tokens = self._pick(rows.logits(), self._code_ids, gens)
            out.append(tokens)
            if step + 1 < n_codes:
                rows.feed_batch(tokens)
        ids = torch.stack(out, dim=1)  # (n, n_codes) token ids
        lookup = torch.full((self.vocab_size,), -1, dtype=torch.long, device=self.device)
        lookup[self._code_ids] = self._code_values
        values = lookup[ids]
        if bool((values < 0).any()):  # cannot happen: only code ids are allowed
            raise RuntimeError("the planner produced a token outside the audio-code range")
        return [row.tolist() for row in values.cpu()]


class _Rows:
    """Conditional rows, and with guidance as many unconditional ones, decoded in step (KV cache,
    left padding with matching position ids); `logits()` is the guided next-token logits."""

    def __init__(self, planner: Planner, cond: list[str], uncond: list[str] | None):
        self.p = planner
        self.n = len(cond)
        self.guided = uncond is not None
        texts = cond + (uncond or [])
        tok = planner.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        self.mask = enc["attention_mask"].to(planner.device)
        from transformers import DynamicCache

        self.cache = DynamicCache(config=planner.model.config)
        self._last = None
        self._forward(enc["input_ids"].to(planner.device))

    def _forward(self, ids) -> None:
        import torch

        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        with torch.inference_mode():
            out = self.p.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                               logits_to_keep=1, **{self.p._cache_arg: self.cache})
        self._last = out.logits[:, -1, :].float()

    def logits(self):
        if not self.guided:
            return self._last
        cond, uncond = self._last[: self.n], self._last[self.n:]
        return uncond + self.p.cfg_scale * (cond - uncond)

    def feed(self, token_ids: list[int]) -> None:
        """The same tokens appended to every row."""
        import torch

        if not token_ids:
            return
        rows = self.n * (2 if self.guided else 1)
        ids = torch.tensor([token_ids] * rows, dtype=torch.long, device=self.p.device)
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        self._forward(ids)

    def feed_batch(self, tokens) -> None:
        """One token per conditional row, repeated on its unconditional row."""
        import torch

        ids = tokens.view(-1, 1)
        if self.guided:
            ids = ids.repeat(2, 1)
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        self._forward(ids)


def _time_signature(value: str | None) -> str | None:
    if not value:
        return None
    m = re.match(r"\s*(\d{1,2})(?:\s*/\s*\d{1,2})?\s*$", str(value))
    return m.group(1) if m and m.group(1) in TIME_SIGNATURES else None
