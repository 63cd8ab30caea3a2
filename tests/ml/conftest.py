"""Fixtures for the apps whose worker runs the real engines on the tiny random-weight models."""
import pytest


@pytest.fixture(scope="session")
def tiny():
    """The tiny models, built once per session (tests/ml/tiny_models.py)."""
    pytest.importorskip("torch")
    from tests.ml.tiny_models import shared_models

    return shared_models()


@pytest.fixture
def app_overrides(tiny, monkeypatch):
    """Settings that make `app`'s worker load the real engines from the tiny models, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny.values()
