from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ghostls.inference.cache import (
    MANIFEST_NAME,
    ModelError,
    list_models,
    models_root,
    read_manifest,
    validate_model_dir,
)
from ghostls.inference.converter.convert import (
    RECIPE,
    _Source,
    convert,
    convert_in_subprocess,
    model_folder_name,
    resolve_precision,
)
from ghostls.inference.fim import template_by_name

# Each conversion costs about 10 s; these three cover ASCII, non-ASCII (full-width) and no FIM tokens.
# Detection for every family is tested on the tokenizers alone in test_fim.py.
CONVERTED_FAMILIES = ("starcoder", "deepseek", "prefix_only")


def greedy_tokens(model_dir: Path, prompt_ids: list[int], count: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + count, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    out = []
    while len(out) < count and not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("family", CONVERTED_FAMILIES)
def test_conversion_writes_model_and_manifest(family: str, tiny_model: Callable[[str], Path]) -> None:
    model_dir = tiny_model(family)
    assert model_dir.name == f"{family}-int8-cpu"
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", MANIFEST_NAME):
        assert (model_dir / name).is_file(), name
    manifest = validate_model_dir(model_dir)
    template = template_by_name(family)
    assert manifest.fim_family == family
    assert manifest.fim_tokens == template.tokens
    assert manifest.stop == list(template.stop)
    assert (manifest.precision, manifest.execution_provider, manifest.architecture) == ("int8", "cpu", "llama")
    assert manifest.file_sizes["model.onnx.data"] == (model_dir / "model.onnx.data").stat().st_size
    assert set(manifest.converter_versions) == {"ghostls", "onnxruntime-genai", "transformers", "torch", "onnx"}
    config = json.loads((model_dir / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] >= 1


def test_native_precision_of_a_checkpoint_that_never_was_a_gguf_is_block_int8(tiny_checkpoints, tiny_model,
                                                                                 tmp_path) -> None:
    # A safetensors checkpoint has no GGUF blocks to keep: every MatMul weight becomes absmax int8 blocks.
    model_dir = convert(tiny_checkpoints["starcoder"], precision="native", out_root=tmp_path)
    manifest = validate_model_dir(model_dir)
    assert model_dir.name == "starcoder-native-cpu" and manifest.precision == "native"
    assert set(manifest.weights) == {"int8 absmax"} and manifest.weights["int8 absmax"] >= 5
    assert tiny_model("starcoder") != model_dir and read_manifest(tiny_model("starcoder")).weights == {}
    prompt = [1, 5, 9, 13, 17, 21]
    assert len(greedy_tokens(model_dir, prompt, 8)) == 8  # it loads and runs in ONNX Runtime GenAI


def test_w8a8_takes_the_projections_after_norms_and_attention_and_the_model_runs(tiny_checkpoints,
                                                                                  tmp_path) -> None:
    import onnx

    model_dir = convert(tiny_checkpoints["starcoder"], precision="w8a8", out_root=tmp_path)
    manifest = validate_model_dir(model_dir)
    assert model_dir.name == "starcoder-w8a8-cpu" and manifest.precision == "w8a8"
    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    # The checkpoint's default KV cache: ghostls's float16 op.
    layers = sum(node.op_type == "HalfKvAttention" for node in graph.node)
    assert layers == 2
    # Per layer: q/k/v (one packed MatMul), o, gate and up; the down projection and the LM head keep blocks.
    assert manifest.weights == {"w8a8": 4 * layers, "int8 absmax": layers + 1}
    ops = [node.op_type for node in graph.node]
    # Three int8 MatMuls a layer (gate and up share one), each quantizing its input per row: ghostls's
    # Int8MatMul in place of onnxruntime's (ops.fuse_small_nodes).
    assert ops.count("Int8MatMul") == 3 * layers
    assert not {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QuantizeLinear"} & set(ops)
    assert not (model_dir / "model.calibration.onnx").exists()
    prompt = [1, 5, 9, 13, 17, 21]
    assert len(greedy_tokens(model_dir, prompt, 8)) == 8


def test_auto_precision_is_w8a8_for_a_gguf_on_the_cpu_only() -> None:
    assert resolve_precision("auto", is_gguf=True) == "w8a8"
    assert resolve_precision("auto", is_gguf=True, execution_provider="cuda") == "native"
    assert resolve_precision("auto", is_gguf=False) == "int8"
    with pytest.raises(ModelError, match="CPU only"):
        resolve_precision("w8a8", is_gguf=True, execution_provider="cuda")


def test_second_call_returns_cached_model(tiny_model: Callable[[str], Path], tiny_checkpoints, tiny_models_root) -> None:
    model_dir = tiny_model("starcoder")
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    events = []
    start = time.monotonic()
    again = convert(tiny_checkpoints["starcoder"], out_root=tiny_models_root, progress=lambda *e: events.append(e))
    assert time.monotonic() - start < 1.0
    assert again == model_dir and events == []
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before


def test_cache_hit_never_imports_torch(tiny_model: Callable[[str], Path], tiny_checkpoints, tiny_models_root) -> None:
    tiny_model("starcoder")
    code = (
        "import sys\nfrom pathlib import Path\nfrom ghostls.inference.converter.convert import convert\n"
        f"convert(Path({str(tiny_checkpoints['starcoder'])!r}), out_root=Path({str(tiny_models_root)!r}))\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_keystroke_path_never_imports_the_converters_tools(tiny_model: Callable[[str], Path]) -> None:
    """The runtime modules, a model's check (its ops library's included) and a completion import neither torch,
    transformers nor the onnx package: those load only in a conversion's subprocess."""
    model_dir = tiny_model("starcoder")
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from ghostls.inference import backend, cache, embedded, engine, fim, provider, remote\n"
        f"model = engine.Engine(Path({str(model_dir)!r}), provider='cpu')\n"
        "model.generate(engine.GenerationRequest(tuple(model.encode('def add(a, b):')), max_new_tokens=2))\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnx', 'onnxscript'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tiny_model_generates(tiny_model: Callable[[str], Path]) -> None:
    from tokenizers import Tokenizer

    model_dir = tiny_model("starcoder")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = template_by_name("starcoder").render("def add(a, b):\n    ", "\n")
    out = greedy_tokens(model_dir, tokenizer.encode(prompt).ids, 4)
    assert len(out) == 4
    assert all(0 <= t < tokenizer.get_vocab_size() + 64 for t in out)


def test_list_models_finds_converted(tiny_model: Callable[[str], Path], tiny_models_root: Path) -> None:
    model_dir = tiny_model("starcoder")
    assert model_dir in [m.path for m in list_models(tiny_models_root)]


def test_models_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GHOSTLS_CACHE_DIR", str(tmp_path))
    assert models_root() == tmp_path / "models"


def test_folder_name_from_source() -> None:
    gguf = Path("/x/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert model_folder_name(gguf, "int8", "cpu") == "smollm2-135m-instruct-q4_1-int8-cpu"
    snapshot = Path("/hf/hub/models--Qwen--Qwen2.5-Coder-0.5B/snapshots/abc123")
    assert model_folder_name(snapshot, "int4", "cuda") == "qwen2-5-coder-0-5b-int4-cuda"


def test_corrupt_safetensors_fails_cleanly(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = shutil.copytree(tiny_checkpoints["codestral"], tmp_path / "broken")
    (src / "model.safetensors").write_bytes(b"\x00" * 64)
    out_root = tmp_path / "models"
    with pytest.raises(ModelError, match="building the ONNX model failed"):
        convert(src, out_root=out_root)
    assert list(out_root.iterdir()) == []


def test_killed_conversion_leaves_no_model(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out_root = tmp_path / "models"
    cmd = [
        sys.executable, "-m", "ghostls.inference.converter.convert", str(tiny_checkpoints["codellama"]),
        "--out-root", str(out_root), "--json-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # kill it (and the builder it started) in the middle of building
            if json.loads(line).get("stage") == "building ONNX":
                time.sleep(1.0)
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = list(out_root.iterdir())
    assert [p.name[:5] for p in leftovers] == [".tmp-"]  # only the dead run's temp folder
    assert not (out_root / "codellama-int8-cpu").exists()

    # The next conversion removes the dead run's temp folder and installs a whole model.
    model_dir = convert(tiny_checkpoints["codellama"], out_root=out_root)
    assert [p.name for p in out_root.iterdir()] == ["codellama-int8-cpu"]
    assert validate_model_dir(model_dir).fim_family == "codellama"


def test_refuses_pickle_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "old-model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelError, match=r"only PyTorch pickle weights \(pytorch_model.bin\)"):
        convert(src, out_root=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_pickle_beside_safetensors_is_never_staged(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = shutil.copytree(tiny_checkpoints["qwen"], tmp_path / "both")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (src / "modeling_evil.py").write_text("import os\n")
    view = _Source.inspect(src).stage_view(tmp_path / "view")
    names = sorted(p.name for p in view.iterdir())
    assert "pytorch_model.bin" not in names and "modeling_evil.py" not in names
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)


def test_rejects_missing_source_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        convert(tmp_path / "nope", out_root=tmp_path)
    with pytest.raises(ModelError, match="no config.json"):
        convert(tmp_path, out_root=tmp_path)
    with pytest.raises(ModelError, match="unknown precision 'int3'"):
        convert(tmp_path, precision="int3", out_root=tmp_path)


@pytest.fixture
def model_copy(tiny_model: Callable[[str], Path], tmp_path: Path) -> Path:
    return shutil.copytree(tiny_model("starcoder"), tmp_path / "model")


def test_validate_catches_truncated_data(model_copy: Path) -> None:
    data = model_copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelError, match="model.onnx.data is truncated"):
        validate_model_dir(model_copy)


@pytest.mark.parametrize("stray", ["libcustom_ops.so", "sub/weights.pkl", "extra.pt", "ops.dll"])
def test_validate_refuses_code_carrying_files(model_copy: Path, stray: str) -> None:
    path = model_copy / stray
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\x7fELF")
    with pytest.raises(ModelError, match=f"can run code.*{Path(stray).name}"):
        validate_model_dir(model_copy)


def test_validate_catches_non_onnx_graph(model_copy: Path) -> None:
    graph = model_copy / "model.onnx"
    graph.write_bytes(b"<html>" + graph.read_bytes()[6:])
    with pytest.raises(ModelError, match="not an ONNX file"):
        validate_model_dir(model_copy)


def test_validate_catches_changed_graph(model_copy: Path) -> None:
    graph = model_copy / "model.onnx"
    content = bytearray(graph.read_bytes())
    content[-1] ^= 0xFF
    graph.write_bytes(bytes(content))
    with pytest.raises(ModelError, match="sha256 differs"):
        validate_model_dir(model_copy)


def test_validate_requires_manifest(model_copy: Path) -> None:
    (model_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ModelError, match="not a ghostls model"):
        validate_model_dir(model_copy)
    (model_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelError, match="manifest .* is unreadable"):
        read_manifest(model_copy)


def test_subprocess_relays_result_and_errors(tiny_model: Callable[[str], Path], tiny_checkpoints, tiny_models_root, tmp_path) -> None:
    model_dir = tiny_model("starcoder")
    assert convert_in_subprocess(tiny_checkpoints["starcoder"], "int8", out_root=tiny_models_root) == model_dir
    src = tmp_path / "old"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ModelError, match="pickle"):
        convert_in_subprocess(src, "int8", out_root=tmp_path / "models")


@pytest.mark.embedded
def test_embedded_model_converts_and_generates(embedded_model_dir: Path) -> None:
    import onnxruntime_genai as og

    manifest = validate_model_dir(embedded_model_dir)
    assert manifest.fim_family == "prefix_only"
    assert manifest.precision == "w8a8"
    assert "<|endoftext|>" in manifest.stop

    model = og.Model(str(embedded_model_dir))
    tokenizer = og.Tokenizer(model)
    prompt_ids = list(tokenizer.encode("def fibonacci(n):\n"))
    out = greedy_tokens(embedded_model_dir, prompt_ids, 16)
    assert out and tokenizer.decode(out).strip()


def test_cuda_target_converts_on_a_cpu_machine(tiny_checkpoints, tmp_path) -> None:
    """A CUDA model (fp16) is built here, without a GPU; its config asks onnxruntime-genai for CUDA."""
    import json

    from ghostls.inference.cache import read_manifest

    out = convert(tiny_checkpoints["qwen"], precision="fp16", execution_provider="cuda", out_root=tmp_path)
    manifest = read_manifest(out)
    assert (manifest.precision, manifest.execution_provider) == ("fp16", "cuda")
    genai = json.loads((out / "genai_config.json").read_text())
    assert "cuda" in json.dumps(genai["model"]["decoder"]["session_options"]["provider_options"]).lower()
    # The builder stamps the model with its own release, never the commit of a git repository around the
    # environment it runs from (a virtual environment inside a project would give that project's HEAD).
    import onnx
    import onnxruntime_genai

    stamp = onnx.load(str(out / "model.onnx"), load_external_data=False).producer_version
    assert stamp == f"{onnxruntime_genai.__version__}+{onnxruntime_genai.__commit__[:7]}"


def test_converted_model_computes_last_position_logits_only(tiny_model: Callable[[str], Path]) -> None:
    import onnx

    graph = onnx.load(str(tiny_model("starcoder") / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    dims = [d.dim_value or d.dim_param for d in logits.type.tensor_type.shape.dim]
    # [batch, 1, vocab] with a pruned LM head; [batch, sequence, vocab] without.
    assert dims[1] == 1, dims


def test_model_from_an_older_recipe_is_converted_again(tiny_checkpoints, tmp_path: Path) -> None:
    out_root = tmp_path / "models"
    model_dir = convert(tiny_checkpoints["qwen"], out_root=out_root)
    manifest = json.loads((model_dir / "ghostls-manifest.json").read_text())
    assert manifest["recipe"] == RECIPE
    del manifest["recipe"]  # as written before recipes existed
    (model_dir / "ghostls-manifest.json").write_text(json.dumps(manifest))
    again = convert(tiny_checkpoints["qwen"], out_root=out_root)
    assert again == model_dir and read_manifest(again).recipe == RECIPE
