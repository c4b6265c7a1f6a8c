"""The decode loop on a real ONNX Runtime GenAI session (a tiny converted model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ghostls.inference.cache import ModelError
from ghostls.inference.engine import Engine, GenerationRequest, common_prefix_length
from ghostls.inference.provider import ProviderChoice, choose_provider

SOURCE = "def add(a, b):\n    return a + b\n\n\ndef multiply(a, b):\n    return a * b\n\n\ndef main():\n"


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model("starcoder"), provider="cpu")


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5, 6], [5, 6, 7]) == 2


def test_greedy_generation_is_deterministic_and_reuses_the_cache(engine):
    ids = tuple(engine.encode(SOURCE))
    request = GenerationRequest(ids, max_new_tokens=8)
    engine.reset()
    cold = engine.generate(request)
    warm = engine.generate(request)
    assert len(cold.token_ids) > 0
    assert warm.token_ids == cold.token_ids
    assert cold.reused_tokens == 0
    assert warm.reused_tokens == len(ids) - 1  # everything but the token that yields the logits


def test_prefix_reuse_gives_the_same_tokens_as_a_cold_start(engine):
    first = tuple(engine.encode(SOURCE))
    grown = tuple(engine.encode(SOURCE + "    result = add(1, 2)\n"))
    engine.reset()
    engine.generate(GenerationRequest(first, max_new_tokens=6))
    reused = engine.generate(GenerationRequest(grown, max_new_tokens=6))
    engine.reset()
    cold = engine.generate(GenerationRequest(grown, max_new_tokens=6))
    assert reused.reused_tokens >= common_prefix_length(first, grown) - 1
    assert reused.reused_tokens > 0
    assert reused.token_ids == cold.token_ids


def test_cancellation_stops_within_one_token(engine):
    ids = tuple(engine.encode(SOURCE))
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return len(generated) >= 2

    generated: list[str] = []

    def track(text: str) -> bool:
        generated.append(text)
        return False

    result = engine.generate(GenerationRequest(ids, max_new_tokens=50), is_complete=track, cancelled=cancelled)
    assert result.stop_reason == "cancelled"
    assert len(result.token_ids) == 2


def test_cancelled_before_start_generates_nothing(engine):
    result = engine.generate(GenerationRequest(tuple(engine.encode(SOURCE)), max_new_tokens=50),
                             cancelled=lambda: True)
    assert result.stop_reason == "cancelled"
    assert result.token_ids == ()


def test_time_budget_and_max_tokens(engine):
    ids = tuple(engine.encode(SOURCE))
    out_of_time = engine.generate(GenerationRequest(ids, max_new_tokens=50, time_budget_s=0.0))
    assert out_of_time.stop_reason == "time_budget"
    limited = engine.generate(GenerationRequest(ids, max_new_tokens=3))
    assert len(limited.token_ids) <= 3
    assert limited.stop_reason in ("max_tokens", "eos")


def test_stop_strings_and_completion_check_cut_the_text(engine):
    ids = tuple(engine.encode(SOURCE))
    free = engine.generate(GenerationRequest(ids, max_new_tokens=10))
    if len(free.text) < 2:
        pytest.skip("the tiny model produced too little text to cut")
    stop = free.text[1]
    cut = engine.generate(GenerationRequest(ids, max_new_tokens=10, stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string"
    assert stop not in cut.text
    complete = engine.generate(GenerationRequest(ids, max_new_tokens=10), is_complete=lambda text: True)
    assert complete.stop_reason == "complete"
    assert len(complete.token_ids) == 1


def test_provider_choice_validates_and_honours_cpu():
    assert choose_provider("cpu") == ProviderChoice("cpu", "CPU requested in settings")
    with pytest.raises(ValueError, match="provider must be one of"):
        choose_provider("tpu")


def test_cuda_asked_for_but_hidden_runs_on_the_cpu_with_a_reason(tiny_model, monkeypatch):
    # No device visible to CUDA, on any machine: the engine asked for CUDA must still load and generate on the CPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    engine = Engine(tiny_model("starcoder"), provider="cuda")
    assert engine.provider.name == "cpu"
    assert engine.provider.reason.startswith("CUDA requested but not usable (")
    assert engine.provider.reason.endswith("); running on the CPU")
    assert choose_provider("auto").reason.startswith("no working CUDA (")
    result = engine.generate(GenerationRequest(tuple(engine.encode(SOURCE)), max_new_tokens=3))
    assert len(result.token_ids) == 3 and result.stop_reason == "max_tokens"


# A CUDA provider that is listed but cannot run: the device node is claimed present (the check before the session)
# and CUDA sees no device, so only a real session can tell. Run in a fresh process: CUDA reads its environment once.
_LISTED_BUT_BROKEN = """
import glob, json, sys, types
from ghostls.inference import provider
from ghostls.inference.engine import Engine, GenerationRequest
claimed = lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else glob.glob(pattern)
provider.glob = types.SimpleNamespace(glob=claimed)
engine = Engine(sys.argv[1], provider="cuda")
result = engine.generate(GenerationRequest(tuple(engine.encode("def add(a, b):\\n")), max_new_tokens=3))
print(json.dumps({"provider": engine.provider.name, "reason": engine.provider.reason,
                  "tokens": len(result.token_ids)}))
"""


def test_a_listed_cuda_provider_that_cannot_run_falls_back_to_a_working_cpu_session(tiny_model):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build lists no CUDA provider: nothing to distrust")
    run = subprocess.run([sys.executable, "-c", _LISTED_BUT_BROKEN, str(tiny_model("starcoder"))],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.splitlines()[-1])
    # The list said CUDA; the probe session said otherwise, and the engine believed the session.
    assert answer["provider"] == "cpu", answer
    assert answer["reason"].startswith("CUDA requested but not usable ("), answer
    assert "no NVIDIA device" not in answer["reason"] and "CUDA_VISIBLE_DEVICES" not in answer["reason"], answer
    assert answer["tokens"] == 3


def test_corrupt_model_is_a_clear_model_error(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model("starcoder"), broken)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelError):
        Engine(broken, provider="cpu")


def test_missing_model_folder_is_a_clear_model_error(tmp_path):
    with pytest.raises(ModelError):
        Engine(tmp_path / "nothing-here", provider="cpu")


@pytest.mark.parametrize("family", ["starcoder", "qwen", "deepseek", "codellama", "codestral", "codegemma",
                                    "prefix_only"])
def test_every_fim_family_converts_prompts_and_generates(tiny_model, family):
    """Each family: a real conversion, its FIM tokens kept whole by the tokenizer, a real generation."""
    from ghostls.inference.cache import read_manifest
    from ghostls.inference.fim import template_by_name

    folder = tiny_model(family)
    assert read_manifest(folder).fim_family == family
    template = template_by_name(family)
    engine = Engine(folder, provider="cpu")
    prompt = template.render("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n")
    ids = engine.encode(prompt)
    for token in template.tokens.values():
        token_id = engine.tokenizer.token_to_id(token.strip())
        assert token_id is not None, f"{token!r} is not one token of the {family} tokenizer"
        assert token_id in ids
    result = engine.generate(GenerationRequest(tuple(ids), max_new_tokens=4))
    assert result.prompt_tokens == len(ids)
    assert result.stop_reason in ("max_tokens", "eos", "stop_string")


def test_each_document_keeps_its_own_cache(engine):
    a = tuple(engine.encode(SOURCE))
    b = tuple(engine.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"))
    engine.reset()
    engine.generate(GenerationRequest(a, max_new_tokens=4, cache_key="file:///a.py"))
    engine.generate(GenerationRequest(b, max_new_tokens=4, cache_key="file:///b.py"))
    # Back in the first document, its prompt is still cached despite the other document's request.
    again = engine.generate(GenerationRequest(a, max_new_tokens=4, cache_key="file:///a.py"))
    assert again.reused_tokens == len(a) - 1
    assert again.first_token_s is not None and again.first_token_s <= again.prefill_s + again.decode_s
    assert engine.cache_keys() == ["file:///b.py", "file:///a.py"]
    engine.reset("file:///b.py")
    assert engine.cache_keys() == ["file:///a.py"]


def test_caches_over_the_byte_budget_are_evicted_least_recently_used(tiny_model):
    small = Engine(tiny_model("starcoder"), provider="cpu")
    ids = tuple(small.encode(SOURCE))
    one_cache = 1280 * small.kv_bytes_per_token  # the smallest cache the Engine allocates
    small.kv_budget_bytes = 2 * one_cache
    for name in ("a", "b", "c"):
        small.generate(GenerationRequest(ids, max_new_tokens=2, cache_key=name))
    assert small.cache_keys() == ["b", "c"]
    assert small.cached_bytes() <= small.kv_budget_bytes
    # A budget below one cache still serves requests, one document at a time.
    small.kv_budget_bytes = 1
    result = small.generate(GenerationRequest(ids, max_new_tokens=2, cache_key="d"))
    assert result.reused_tokens == 0 and small.cache_keys() == ["d"]
