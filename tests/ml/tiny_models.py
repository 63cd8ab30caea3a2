"""Tiny random-weight instances of the real engine models, saved like the real checkpoints.

The real engines load ACE-Step 1.5 (diffusers `AceStepPipeline`), Qwen2-7B-Instruct
(`Qwen2ForCausalLM`) and SDXL-Turbo (`StableDiffusionXLPipeline`) from folders under
`MODEL_DIR`. These builders make the same classes at toy sizes, with random weights and a
tokenizer trained in-process (no model hub), and `save_pretrained` them into the same folder
layout, so the engines' real loading and calling code can run on a CPU in seconds. The stems
model (Demucs `HTDemucs`) is saved as a Demucs local repository (`build_demucs`).

Used by `tests/ml` and by `bench/gpu.py --tiny` (both import it as `tests.ml.tiny_models`).
Heavy libraries are imported inside the functions so importing this module stays cheap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Folder names under the model dir, mirroring the hub ids the real engines default to.
TINY_ACESTEP = "tiny/acestep-turbo"
TINY_WRITER = "tiny/qwen2-instruct"
TINY_COVER = "tiny/sdxl-turbo"
TINY_STEMS = "tiny/htdemucs"  # a Demucs local repo: the folder is named after its bag
TINY_ACESTEP_BASE = "tiny/acestep-base"  # a base checkpoint with the audio tokenizer: every task

# A Qwen-style chat template (the real Qwen2 template, trimmed to what the writer uses).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    '{"title": "Neon Rain", "tags": "synthwave, 120 bpm, A minor, female vocals", "bpm": 120,'
    ' "key": "A minor", "time_signature": "4/4", "categories": ["Synthwave", "Electronic"]}',
    "[verse]\nCity lights are calling me tonight\nEvery shadow dancing in the light\n"
    "[chorus]\nWe run, we run, into the neon rain\n[bridge]\nHold on\n[outro]\nFade away",
    "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n# Caption\n"
    "lofi hip hop, mellow piano, vinyl crackle\n\n# Metas\n- bpm: 85\n- timesignature: 4\n"
    "- keyscale: C major\n- duration: 60 seconds\n",
    "# Languages\nen\n\n# Lyric\n[verse]\nhello world",
    "You write songs. Answer with one JSON object: title, tags, lyrics, categories.",
    "pop rock jazz blues country folk metal ambient classical reggae funk soul disco house techno",
    "male vocals, acoustic guitar, drums, bass, strings, upbeat, sad, happy, dreamy, energetic",
    "0 1 2 3 4 5 6 7 8 9 { } [ ] ( ) : , . ! ? ' \" - _ / # * \\n",
]


@dataclass
class TinyModels:
    """Where the tiny models were saved: `root` is the model dir, the rest are folder names in it."""

    root: Path
    acestep: str = TINY_ACESTEP
    writer: str = TINY_WRITER
    cover: str = TINY_COVER
    stems: str = TINY_STEMS

    def values(self, **overrides: Any) -> dict[str, Any]:
        """Settings selecting the real engines on these tiny models on the CPU (apply them to a
        config object, or pass `settings()` to `load_engines`)."""
        values: dict[str, Any] = dict(
            ENGINE="real",
            ENGINE_MUSIC=None,
            ENGINE_WRITER=None,
            ENGINE_COVER=None,
            MODEL_DIR=str(self.root),
            ACESTEP_MODEL=self.acestep,
            WRITER_MODEL=self.writer,
            COVER_MODEL=self.cover,
            ENGINE_STEMS=None,
            STEMS_MODEL=self.stems,
            ENGINE_DEVICE="cpu",
            WRITER_MAX_NEW_TOKENS=48,
            COVER_STEPS=1,
        )
        values.update(overrides)
        return values

    def settings(self, **overrides: Any) -> Any:
        """A settings object selecting the real engines on these tiny models (CPU)."""
        from config import TestConfig

        return TestConfig(**self.values(**overrides))


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with Qwen's special tokens, trained here on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def clip_tokenizer(max_length: int = 77):
    """A CLIP tokenizer from an in-memory vocab and merges.

    transformers 5 builds CLIPTokenizer from `vocab`/`merges` objects; passing file paths
    (`vocab_file=`) is silently ignored, so the vocab is given as Python objects here.
    """
    from transformers import CLIPTokenizer

    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-&")
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    pairs = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>"), ("e", "r</w>"), ("o", "n</w>")]
    merges = []
    for a, b in pairs:
        vocab.setdefault(a + b, len(vocab))
        merges.append((a, b))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    return tok


def build_acestep(path: Path, tokenizer=None, *, turbo: bool = True, seed: int = 0, model_version: str | None = None,
                  audio_tokenizer: bool = False) -> Path:
    """Save a tiny `AceStepPipeline` (DiT, condition encoder, Oobleck VAE, Qwen3 text encoder).

    The VAE keeps the real geometry (48 kHz, hop 1920 -> 25 latent frames per second) at toy
    widths, so durations and sample rates match the real model. `model_version` is what the
    transformer config says the checkpoint is (``turbo`` / ``base`` / ``sft``; default from
    `turbo`); `audio_tokenizer` adds the optional audio tokenizer and detokenizer that the cover
    (remix) task needs.
    """
    import torch
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = tokenizer or train_tokenizer()
    acoustic = 8
    torch.manual_seed(seed)
    transformer = AceStepTransformer1DModel(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        in_channels=3 * acoustic,
        audio_acoustic_hidden_dim=acoustic,
        patch_size=2,
        rope_theta=10000.0,
        sliding_window=16,
        is_turbo=turbo,
        model_version=model_version or ("turbo" if turbo else "base"),
    )
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    condition_encoder = AceStepConditionEncoder(
        hidden_size=32,
        intermediate_size=64,
        text_hidden_dim=32,
        timbre_hidden_dim=acoustic,
        num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        rope_theta=10000.0,
        sliding_window=16,
    )
    with torch.no_grad():  # a non-zero "silence" so the timbre path carries signal
        condition_encoder.silence_latent.normal_(0.0, 0.1)
    vae = AutoencoderOobleck(
        encoder_hidden_size=2 * acoustic,  # mean and scale of `acoustic` latent channels
        downsampling_ratios=[2, 4, 4, 6, 10],
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4,
        decoder_input_channels=acoustic,
        audio_channels=2,
        sampling_rate=48000,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    extra: dict[str, Any] = {}
    if audio_tokenizer:
        from diffusers.pipelines.ace_step.modeling_ace_step import (
            AceStepAudioTokenDetokenizer,
            AceStepAudioTokenizer,
        )

        small = dict(hidden_size=32, intermediate_size=64, audio_acoustic_hidden_dim=acoustic, pool_window_size=5,
                     num_attention_pooler_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                     rope_theta=10000.0, sliding_window=16)
        extra = dict(audio_tokenizer=AceStepAudioTokenizer(fsq_dim=32, fsq_input_levels=[8, 5, 5], **small),
                     audio_token_detokenizer=AceStepAudioTokenDetokenizer(**small))
    pipe = AceStepPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        condition_encoder=condition_encoder,
        scheduler=scheduler,
        **extra,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def build_writer(path: Path, tokenizer=None, *, seed: int = 0) -> Path:
    """Save a tiny `Qwen2ForCausalLM` with the trained tokenizer and a Qwen chat template."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or train_tokenizer()
    torch.manual_seed(seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            eos_token_id=eos,
            pad_token_id=pad,
            bos_token_id=None,
        )
    )
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_cover(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny SDXL pipeline (two CLIP text encoders, UNet, VAE with the real x8 scale).

    The scheduler is SDXL-Turbo's: Euler ancestral with trailing timesteps.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=512,
        mid_block_add_attention=False,
    )
    text_config = dict(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path


def build_demucs(path: Path, *, sources: tuple[str, ...] = ("drums", "bass", "other", "vocals"),
                 samplerate: int = 44100, seed: int = 0) -> Path:
    """Save a tiny random-weight `HTDemucs` as a Demucs local repository: the package
    ``<signature>-<sha256 prefix>.th`` ({klass, args, kwargs, state}, as Demucs's pretrained
    files are) and ``<folder name>.yaml`` naming it, so `demucs.pretrained.get_model(name,
    repo=path)` loads it. Real geometry (44.1 kHz, nfft 4096, depth 4) at toy widths and a
    1 s training segment; pass the six sources of htdemucs_6s to get a six-stem model."""
    from fractions import Fraction

    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state, save_with_checksum

    torch.manual_seed(seed)
    model = HTDemucs(sources=list(sources), samplerate=samplerate, segment=Fraction(1), channels=4,
                     dconv_mode=0, t_layers=1, t_heads=2)
    args, kwargs = model._init_args_kwargs
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": get_state(model, None, half=True)}
    path.mkdir(parents=True, exist_ok=True)
    signature = f"tiny{len(sources)}src"
    save_with_checksum(package, path / f"{signature}.th")
    (path / f"{path.name}.yaml").write_text(f"models: ['{signature}']\n")
    return path


AUDIO_CODES = 64000
"""Upstream ACE-Step 1.5's audio-code vocabulary: ``<|audio_code_0|>`` .. ``<|audio_code_63999|>``
(`acestep/constrained_logits_processor.py`, MAX_AUDIO_CODE = 63999)."""


def planner_tokenizer(vocab_size: int = 512, codes: int = AUDIO_CODES):
    """The tiny tokenizer with the 5 Hz LM's extra tokens: Qwen3's ``<think>`` / ``</think>``
    (added tokens) and `codes` ``<|audio_code_N|>`` tokens, each a single token id.

    The real checkpoints' tokenizer (a Qwen3 vocabulary with these tokens, and its own chat
    template) is not available offline; this one keeps the spelling and count of the tokens, not
    their ids or merges, and uses the Qwen-style `CHAT_TEMPLATE` above. The audio-code tokens are
    put in the BPE vocabulary rather than registered as 64,000 added tokens: transformers takes
    seconds to load that many added tokens, and the planner finds the codes by their spelling in
    the vocabulary (as upstream's `_precompute_audio_code_tokens` does) and never encodes their
    text, so both layouts load and decode through the same code."""
    import json as _json

    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = train_tokenizer(vocab_size)
    data = _json.loads(base.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    taken = max(max(vocab.values()), max(t["id"] for t in data["added_tokens"])) + 1
    for i in range(codes):
        vocab[f"<|audio_code_{i}|>"] = taken + i
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_json.dumps(data)),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_planner(path: Path, *, seed: int = 0, codes: int = AUDIO_CODES) -> Path:
    """Save a tiny random-weight `Qwen3ForCausalLM` (the 5 Hz LM's architecture: the published
    checkpoints are Qwen3-0.6B / 1.7B / 4B) with `planner_tokenizer`."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = planner_tokenizer(codes=codes)
    torch.manual_seed(seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            eos_token_id=eos,
            pad_token_id=pad,
            bos_token_id=None,
        )
    )
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_safety_checker(path: Path, *, flag_everything: bool = False, seed: int = 0) -> Path:
    """Save a tiny `StableDiffusionSafetyChecker` (a CLIP vision tower at toy size) and its CLIP
    image processor, laid out like ``CompVis/stable-diffusion-safety-checker``.

    The random weights decide nothing by themselves, so the concept thresholds do:
    `flag_everything` sets them below any cosine similarity (every image is flagged), otherwise
    above any (no image is)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, projection_dim=8),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=8),
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config)
    threshold = -2.0 if flag_everything else 2.0  # cosine similarities lie in [-1, 1]
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    path.mkdir(parents=True, exist_ok=True)
    checker.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def ensure_acestep_base(models: TinyModels) -> str:
    """The tiny base checkpoint (with the audio tokenizer) next to the shared models, built on
    first use; returns its name under `models.root` (an ACESTEP_MODEL value)."""
    path = models.root / TINY_ACESTEP_BASE
    if not (path / "model_index.json").exists():
        build_acestep(path, turbo=False, model_version="base", audio_tokenizer=True)
    return TINY_ACESTEP_BASE


def build_all(root: Path | str) -> TinyModels:
    """Build all the tiny models under `root` (the model dir) unless already there."""
    root = Path(root)
    models = TinyModels(root=root)
    marker = root / "tiny" / "built.json"
    if marker.exists():
        return models
    tokenizer = train_tokenizer()
    build_acestep(root / models.acestep, tokenizer, audio_tokenizer=True)  # turbo: text2music, repaint, cover
    build_writer(root / models.writer, tokenizer)
    build_cover(root / models.cover)
    build_demucs(root / models.stems)
    marker.write_text(json.dumps({"acestep": models.acestep, "writer": models.writer, "cover": models.cover,
                                  "stems": models.stems}))
    return models


_SHARED: TinyModels | None = None


def shared_models() -> TinyModels:
    """The tiny models of this process, built once into a temporary folder (removed at exit).

    Test modules and benchmarks in one process share them, so they are built only once.
    """
    global _SHARED
    if _SHARED is None:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="tunesmith-tiny-models-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SHARED = build_all(root)
    return _SHARED
