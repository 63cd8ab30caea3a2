"""The in-process writer's speed-ups on the tiny Qwen2 writer: a static KV cache
(WRITER_CACHE=static) and prompt-lookup decoding (WRITER_PROMPT_LOOKUP) change how fast the
tokens come, never which tokens: greedy decoding gives exactly the same answer either way."""
from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from config import ConfigError, TestConfig  # noqa: E402
from jobs.engines import load_engines  # noqa: E402
from jobs.engines.base import SongSpec, WriteRequest  # noqa: E402
from jobs.engines.qwen import STATIC_PROMPT_TOKENS, QwenWriter, build_messages  # noqa: E402

pytestmark = pytest.mark.ml

NEW_TOKENS = 48
REQUEST = WriteRequest(mode="description", description="we run, we run, into the neon rain; a synthwave chorus")


@pytest.fixture(scope="module")
def lm(tiny):
    """The tiny writer with its weights drawn wider (std 0.2), so that greedy decoding wanders
    over many tokens instead of repeating one (a comparison of two answers then means something)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = tiny.root / tiny.writer
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def writer(lm, **kw) -> QwenWriter:
    model, tokenizer = lm
    return QwenWriter(model=model, tokenizer=tokenizer, model_id="tiny", device="cpu", max_new_tokens=NEW_TOKENS, **kw)


def greedy(w: QwenWriter) -> tuple[list[int], object, int]:
    """(new token ids, the KV cache generate used, forward passes) of one greedy answer."""
    ids, mask = w.encode(build_messages(REQUEST))
    calls = []
    hook = w.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = w.generate_ids(ids, mask, temperature=0, return_dict_in_generate=True)
    finally:
        hook.remove()
    return out.sequences[0, ids.shape[1]:].tolist(), out.cache, len(calls)


def test_static_cache_gives_the_same_tokens_as_the_dynamic_one(lm):
    dynamic, dynamic_cache, _ = greedy(writer(lm))
    static_writer = writer(lm, cache="static")
    static, static_cache, _ = greedy(static_writer)
    assert type(dynamic_cache).__name__ == "DynamicCache"
    assert type(static_cache).__name__ == "StaticCache"
    assert static_cache.get_max_length() == static_writer.max_cache_len == STATIC_PROMPT_TOKENS + NEW_TOKENS
    assert len(dynamic) == NEW_TOKENS and len(set(dynamic)) > 10  # a varied answer, not one token repeated
    assert static == dynamic
    # compiled decoding (CUDA graphs) is for CUDA only: on the CPU the static cache runs eagerly
    assert not static_writer.compiled and static_writer.generation_kwargs()["disable_compile"] is True
    again, _, _ = greedy(static_writer)  # the cache is reused at its fixed size, same answer
    assert again == dynamic


def test_prompt_lookup_gives_the_same_tokens_in_fewer_passes(lm):
    plain, _, plain_passes = greedy(writer(lm))
    looked_up, _, passes = greedy(writer(lm, prompt_lookup=3))
    assert looked_up == plain
    assert plain_passes == NEW_TOKENS  # one pass per token without it
    assert passes < plain_passes  # some proposed tokens were accepted
    both, _, _ = greedy(writer(lm, cache="static", prompt_lookup=3))
    assert both == plain


def test_settings_reach_the_writer_and_it_still_writes(tiny):
    engines = load_engines(tiny.settings(ENGINE_MUSIC="offline", ENGINE_COVER="offline",
                                         WRITER_CACHE="Static", WRITER_PROMPT_LOOKUP=4, WRITER_MAX_NEW_TOKENS=16))
    w = engines.writer
    assert (w.cache, w.prompt_lookup, w.max_cache_len) == ("static", 4, STATIC_PROMPT_TOKENS + 16)
    kwargs = w.generation_kwargs()
    assert kwargs["cache_implementation"] == "static" and kwargs["prompt_lookup_num_tokens"] == 4
    spec = w.write(REQUEST)  # sampling, static cache and prompt lookup together
    assert isinstance(spec, SongSpec) and spec.title and spec.lyrics and w.last.new_tokens > 0
    assert w.describe()["cache"] == "static"
    default = load_engines(tiny.settings(ENGINE_MUSIC="offline", ENGINE_COVER="offline")).writer
    assert (default.cache, default.prompt_lookup) == ("dynamic", 0)
    assert "cache_implementation" not in default.generation_kwargs()
    assert "prompt_lookup_num_tokens" not in default.generation_kwargs()


def test_bad_cache_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="WRITER_CACHE='paged': expected one of dynamic, static"):
        TestConfig(WRITER_CACHE="paged")
    with pytest.raises(ConfigError, match="WRITER_PROMPT_LOOKUP"):
        TestConfig(WRITER_PROMPT_LOOKUP=-2)
