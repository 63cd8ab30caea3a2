"""Engine selection, model checks, CUDA error classes and the writer's answer parser.

None of this needs torch or weights: it runs in every test run. The tests that load the tiny
real models are in test_tiny_engines.py (marked `ml`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs.engines import (  # noqa: E402
    LOAD_COUNTS,
    is_cuda_oom,
    is_fatal_cuda_error,
    load_engines,
    role_mode,
)
from core.weights import (  # noqa: E402
    ROLE_MODELS,
    ModelMissingError,
    describe_models,
    missing_files,
    model_path,
    require_model,
)
from jobs.engines.qwen import parse_answer, validate_answer  # noqa: E402
from config import ConfigError, TestConfig  # noqa: E402


def settings(**values):
    base = dict(ENGINE="auto", ENGINE_MUSIC=None, ENGINE_WRITER=None, ENGINE_COVER=None, MODEL_DIR="/nonexistent")
    base.update(values)
    return TestConfig(**base)


# ------------------------------------------------------------------------------ importing


def test_importing_the_engines_does_not_import_torch():
    code = (
        "import sys\n"
        "import jobs.engines, core.weights, jobs.engines.acestep, jobs.engines.qwen, jobs.engines.sdxl\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('light')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "light" in out.stdout


# ------------------------------------------------------------------------------ modes


def test_role_mode_reads_engine_and_per_role_overrides():
    s = settings(ENGINE="real", ENGINE_COVER="offline")
    assert role_mode(s, "music") == "real"
    assert role_mode(s, "writer") == "real"
    assert role_mode(s, "cover") == "offline"
    assert role_mode(settings(ENGINE=None), "music") == "auto"
    assert role_mode(settings(ENGINE=""), "writer") == "auto"  # nothing configured
    assert role_mode(settings(ENGINE=" Offline "), "music") == "offline"
    with pytest.raises(ConfigError, match="ENGINE_MUSIC"):
        settings(ENGINE_MUSIC="gpu")
    with pytest.raises(ConfigError, match="auto, real, offline"):
        settings(ENGINE="fast")


def test_offline_mode_builds_the_offline_engines_and_counts_them():
    before = dict(LOAD_COUNTS)
    engines = load_engines(settings(ENGINE="offline"))
    assert engines.offline_roles == ["music", "writer", "cover"]
    assert all(engines.engine(r).offline for r in ("music", "writer", "cover"))
    assert {r: LOAD_COUNTS[r] - before.get(r, 0) for r in ("music", "writer", "cover")} == {
        "music": 1, "writer": 1, "cover": 1}
    line = engines.describe()
    assert "music=" in line and "offline" in line and "ENGINE=offline" in line
    info = engines.as_dict()
    assert info["roles"]["writer"]["offline"] is True


def test_auto_without_gpu_or_weights_falls_back_and_says_why(tmp_path):
    engines = load_engines(settings(ENGINE="auto", MODEL_DIR=str(tmp_path)))
    assert engines.offline_roles == ["music", "writer", "cover"]
    for role in ("music", "writer", "cover"):
        reason = engines.reasons[role]
        assert reason.startswith("auto: ")
        # either no CUDA / no torch here, or (on a GPU machine) the weights are missing
        assert any(w in reason for w in ("CUDA", "torch", "weights missing")), reason


def test_real_mode_names_the_missing_weights(tmp_path):
    with pytest.raises(ModelMissingError) as info:
        load_engines(settings(ENGINE="offline", ENGINE_MUSIC="real", MODEL_DIR=str(tmp_path)))
    message = str(info.value)
    assert "music" in message and ROLE_MODELS["music"].default in message
    assert "flask models fetch" in message and "ENGINE_MUSIC=offline" in message


# ------------------------------------------------------------------------------ model folders


def _write(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_missing_files_for_a_transformers_model(tmp_path):
    folder = tmp_path / "Qwen" / "Qwen2-7B-Instruct"
    assert missing_files(folder, "transformers") == ["the whole folder"]
    _write(folder / "config.json")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    _write(folder / "model.safetensors.index.json", json.dumps({"weight_map": shards}))
    _write(folder / "model-00001-of-00002.safetensors", "x")
    assert missing_files(folder, "transformers") == ["model-00002-of-00002.safetensors", "tokenizer.json"]
    _write(folder / "model-00002-of-00002.safetensors", "x")
    _write(folder / "tokenizer.json")
    assert missing_files(folder, "transformers") == []


def test_missing_files_for_a_diffusers_pipeline(tmp_path):
    folder = tmp_path / "pipe"
    _write(folder / "model_index.json", json.dumps({
        "_class_name": "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "image_encoder": [None, None],
    }))
    assert missing_files(folder, "diffusers") == ["unet/", "tokenizer/", "scheduler/"]
    _write(folder / "unet" / "config.json")
    _write(folder / "scheduler" / "other.json")
    (folder / "tokenizer").mkdir()
    assert missing_files(folder, "diffusers") == [
        "unet/*.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"]
    _write(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors", "x")
    _write(folder / "tokenizer" / "vocab.json")
    _write(folder / "scheduler" / "scheduler_config.json")
    assert missing_files(folder, "diffusers") == []


def test_require_model_and_model_paths(tmp_path):
    s = settings(MODEL_DIR=str(tmp_path), WRITER_MODEL="org/name")
    assert model_path(tmp_path, "org/name") == tmp_path / "org" / "name"
    assert model_path(tmp_path, str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    with pytest.raises(ModelMissingError, match="org/name"):
        require_model(s, "writer")
    rows = {r["role"]: r for r in describe_models(s)}
    assert rows["writer"]["model"] == "org/name" and not rows["writer"]["present"]
    assert rows["cover"]["model"] == "stabilityai/sdxl-turbo"


# ------------------------------------------------------------------------------ CUDA errors


def test_out_of_memory_is_recognised_through_wrapping():
    oom = RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total capacity)")
    assert is_cuda_oom(oom)
    assert not is_fatal_cuda_error(oom)
    try:
        try:
            raise oom
        except RuntimeError as inner:
            raise ValueError("render failed") from inner
    except ValueError as outer:
        assert is_cuda_oom(outer)
    assert not is_cuda_oom(ValueError("bad input"))
    assert not is_cuda_oom(RuntimeError("expected all tensors on the same device"))


def test_other_cuda_errors_are_fatal():
    for text in (
        "CUDA error: an illegal memory access was encountered",
        "CUDA error: device-side assert triggered",
        "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR",
        "CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx",
    ):
        assert is_fatal_cuda_error(RuntimeError(text)), text
    assert not is_fatal_cuda_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_fatal_cuda_error(KeyError("cuda"))


def test_torch_error_classes_when_torch_is_installed():
    torch = pytest.importorskip("torch")
    assert is_cuda_oom(torch.OutOfMemoryError("CUDA out of memory."))
    assert not is_fatal_cuda_error(torch.OutOfMemoryError("CUDA out of memory."))
    assert is_fatal_cuda_error(torch.AcceleratorError("unspecified launch failure"))


# ------------------------------------------------------------------------------ writer parser

GOOD = {
    "title": "Neon Rain",
    "tags": "synthwave, retro, female vocals",
    "bpm": 110,
    "key": "A minor",
    "time_signature": "4/4",
    "lyrics": "[verse]\nCity lights are calling\nEvery shadow dancing\n[chorus]\nWe run into the rain",
    "categories": ["Synthwave"],
}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(GOOD),
        "Sure! Here is your song:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nEnjoy!",
        "```\n" + json.dumps(GOOD) + "\n```",
        json.dumps(GOOD) + "\n\nI hope you like it. {not json}",
        "Here you go: " + json.dumps(GOOD).replace('"', "'"),  # single quotes
        json.dumps(GOOD)[:-1] + ",}",  # trailing comma
        json.dumps(GOOD).replace("\\n", "\n"),  # raw new lines inside strings
        json.dumps(GOOD).replace('"', "\u201c", 2),  # smart quotes around the first key
        "[" + json.dumps(GOOD) + "]",  # wrapped in a list
    ],
)
def test_parser_recovers_the_object(text):
    answer = parse_answer(text)
    assert answer is not None
    valid, problems = validate_answer(answer)
    assert problems == []
    assert valid["title"] == "Neon Rain" and valid["bpm"] == 110 and valid["key"] == "A minor"
    assert valid["categories"] == ["Synthwave"]
    assert valid["lyrics"].startswith("[verse]\nCity lights are calling")


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "{", "{}", "[1, 2, 3]", "null", None, 42])
def test_parser_gives_up_cleanly(text):
    answer = parse_answer(text)  # type: ignore[arg-type]
    valid, problems = validate_answer(answer)
    assert valid == {} and problems


def test_parser_repairs_a_cut_off_answer_and_python_literals():
    cut = '{"title": "Half", "tags": "lofi, piano", "bpm": 80, "lyrics": "[verse]\\nline one\\nline tw'
    answer = parse_answer(cut)
    assert answer["title"] == "Half" and answer["bpm"] == 80 and "line one" in answer["lyrics"]
    py = "{'title': \"Don't Stop\", 'tags': ['rock', 'Guitar'], 'bpm': None, 'instrumental': True}"
    answer = parse_answer(py)
    assert answer["title"] == "Don't Stop" and answer["bpm"] is None
    bare = '{title: "Bare Keys", tags: "jazz"}'
    assert parse_answer(bare) == {"title": "Bare Keys", "tags": "jazz"}


def test_validation_coerces_near_misses_and_names_problems():
    answer = parse_answer(json.dumps({
        "Song Title": "  **Night Drive**  ",
        "Style": ["Synthwave", "RETRO", "synthwave"],
        "Tempo": "120 BPM",
        "Key": "F#m",
        "Time Signature": 3,
        "Lyrics": "Verse 1:\nhello there\nline two\nChorus:\nla la la",
        "Genres": "hip hop, HipHop, rnb, misc",
    }))
    valid, problems = validate_answer(answer)
    assert problems == []
    assert valid == {
        "title": "Night Drive",
        "tags": "synthwave, retro",
        "bpm": 120,
        "key": "F# minor",
        "time_signature": "3/4",
        "lyrics": "[verse]\nhello there\nline two\n\n[chorus]\nla la la",
        "categories": ["Hip-Hop", "R&B"],
    }
    bad = {"title": "Untitled", "tags": "", "bpm": 400, "key": "purple", "time_signature": "odd",
           "lyrics": "la", "categories": ["none"]}
    valid, problems = validate_answer(bad)
    assert valid == {}
    assert len(problems) == 7 and any(p.startswith("bpm is invalid") for p in problems)
    # only the wanted fields are checked
    valid, problems = validate_answer({"title": "Only Title"}, ("title",))
    assert valid == {"title": "Only Title"} and problems == []


# ------------------------------------------------------------------------------ fetching


def test_fetch_models_downloads_only_what_loads_and_skips_complete_models(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from core import weights as fetch

    calls = []
    repo_files = {
        "stabilityai/sdxl-turbo": {
            "model_index.json": json.dumps({"unet": ["diffusers", "UNet2DConditionModel"],
                                            "tokenizer": ["transformers", "CLIPTokenizer"]}),
            "unet/config.json": "{}",
            "unet/diffusion_pytorch_model.safetensors": "x",
            "unet/diffusion_pytorch_model.fp16.safetensors": "x",
            "tokenizer/vocab.json": "{}",
            "sd_xl_turbo_1.0_fp16.safetensors": "x",
        },
    }

    def fake_snapshot_download(repo_id, local_dir, allow_patterns=None, revision=None, token=None):
        import fnmatch

        calls.append((repo_id, tuple(allow_patterns or ())))
        for name, text in repo_files[repo_id].items():
            if allow_patterns and not any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                continue
            _write(Path(local_dir) / name, text)
        return local_dir

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    said: list[str] = []
    done = fetch.fetch_models(tmp_path, ["cover"], echo=said.append)
    folder = tmp_path / "stabilityai" / "sdxl-turbo"
    assert done == {"cover": folder}
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()  # fp32 copy skipped
    assert not (folder / "sd_xl_turbo_1.0_fp16.safetensors").exists()  # single-file checkpoint skipped
    assert any("ready" in line for line in said)
    fetch.fetch_models(tmp_path, ["cover"], echo=said.append)  # complete: no second download
    assert len(calls) == 1 and "already in" in said[-1]

    # a repo without fp16 files: the default weights are fetched instead
    repo_files["someone/sdxl-fp32"] = {k: v for k, v in repo_files["stabilityai/sdxl-turbo"].items() if "fp16" not in k}
    done = fetch.fetch_models(tmp_path, ["cover"], models={"cover": "someone/sdxl-fp32"}, echo=said.append)
    assert (done["cover"] / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert len(calls) == 3

    repo_files["someone/broken"] = {"README.md": "no weights here"}
    with pytest.raises(ModelMissingError, match="model_index.json"):
        fetch.fetch_models(tmp_path, ["music"], models={"music": "someone/broken"}, echo=said.append)
    with pytest.raises(ValueError, match="unknown role"):
        fetch.fetch_models(tmp_path, ["drums"])
    # a hub error names the model and is a ModelMissingError for the CLI
    with pytest.raises(ModelMissingError, match="Could not download the writer model 'nobody/nothing'"):
        fetch.fetch_models(tmp_path, ["writer"], models={"writer": "nobody/nothing"}, echo=said.append)
