"""Converting a Hugging Face checkpoint or a GGUF file into a cached ONNX Runtime GenAI model.

Owns the model cache's write side: a model appears whole (built in a temp folder, then renamed) or not at all.
Imports torch and transformers only inside the functions that convert; the server runs this module as a
subprocess (`python -m ghostls.inference.converter.convert SRC --json-progress`) and must never import them itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ghostls.inference.cache import (
    GENAI_CONFIG,
    MANIFEST_NAME,
    MODEL_DATA_FILE,
    MODEL_FILE,
    PICKLE_SUFFIXES,
    ModelError,
    ModelManifest,
    models_root,
    read_manifest,
    sha256_file,
    validate_model_dir,
)
from ghostls.inference.fim import detect_template, tokens_of_tokenizer_json

# "native" keeps a GGUF file's own blocks exactly (Q4_1 as 4-bit, Q8_0 as 8-bit; requantize.py) and
# quantizes any other weight to int8; "w8a8" is native with the projections after a norm or attention as int8
# weights against int8 activations (CPU only: onnxruntime's u8s8 GEMM); the others are onnxruntime-genai's
# builder precisions.
PRECISIONS = ("w8a8", "native", "int4", "int8", "fp16", "fp32")
# What "auto" (the default) means: a GGUF becomes w8a8 on the CPU (native for CUDA); a float checkpoint int8.
AUTO = "auto"
# The prompts that calibrate w8a8's smoothing: the start of a few standard-library modules (real code, present
# wherever Python is), each run from an empty cache.
_CALIBRATION_MODULES = ("os", "functools", "typing")
_CALIBRATION_TOKENS = 768
EXECUTION_PROVIDERS = ("cpu", "cuda")
# The KV cache's type on the CPU. "float16" and "int8" swap onnxruntime's GroupQueryAttention (a float32 cache on
# the CPU) for ghostls's own op over that cache (ops/kv_attention.py): a half or about a quarter of the
# bytes a decode step reads per token of context. "auto" means int8 for a GGUF (measured on the embedded model:
# logits as close to the float reference as float32's cache, docs/benchmarks.md) and float16 for a checkpoint
# (int8 keys are untried on models with outlying key channels, as Qwen2's), where the ops build and the model's
# attention is one they stand in for; float32 otherwise.
KV_CACHES = ("int8", "float16", "float32")
# Options for onnxruntime-genai's builder. prune_lm_head computes logits for the last position only: a
# completion never needs the others, and the LM head over every prompt token is a fifth of a small
# model's prefill. RECIPE names this set and what the converter does after the builder: bump it when they
# change, and cached models are converted again.
BUILDER_OPTIONS = ("prune_lm_head=true",)
RECIPE = 8
# Files of a Hugging Face checkpoint the converter may read: weights, configs, tokenizer data. Everything else
# (pickled weights, remote-code *.py, READMEs) stays out of the folder the builder sees.
_CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")
_TEMP_PREFIX = ".tmp-"
_LOG_TAIL_CHARS = 3000

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class _Source:
    """A checkpoint folder or a GGUF file, reduced to the files the converter will read."""

    path: Path
    is_gguf: bool
    files: tuple[Path, ...]

    @classmethod
    def inspect(cls, src: Path) -> _Source:
        if src.is_file():
            if src.suffix.lower() != ".gguf":
                raise ModelError(f"{src} is neither a .gguf file nor a Hugging Face checkpoint folder")
            return cls(src, True, (src,))
        if not src.is_dir():
            raise ModelError(f"model source {src} does not exist")
        if not (src / "config.json").is_file():
            raise ModelError(f"{src} is not a Hugging Face checkpoint: it has no config.json")
        entries = sorted(p for p in src.iterdir() if p.is_file())
        if not any(p.name.endswith(".safetensors") for p in entries):
            pickles = [p.name for p in entries if p.name.lower().endswith(PICKLE_SUFFIXES)]
            if pickles:
                raise ModelError(
                    f"{src} holds only PyTorch pickle weights ({', '.join(pickles)}); ghostls never loads "
                    "pickles because they can run code. Use the checkpoint's safetensors release instead"
                )
            raise ModelError(f"{src} has no *.safetensors weights")
        return cls(src, False, tuple(p for p in entries if p.name.lower().endswith(_CHECKPOINT_SUFFIXES)))

    def fingerprint(self) -> list[list]:
        """Cheap identity of the source (names, sizes, mtimes): a cache hit on it skips hashing gigabytes."""
        base = self.path.parent if self.is_gguf else self.path
        return [[p.relative_to(base).as_posix(), (st := p.stat()).st_size, st.st_mtime_ns] for p in self.files]

    def sha256(self) -> str:
        if self.is_gguf:
            return sha256_file(self.path)
        h = hashlib.sha256()
        for p in self.files:
            h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
        return h.hexdigest()

    def stage_view(self, into: Path) -> Path:
        """A folder of links to the safe files only, so the builder cannot pick up a pickle or remote code."""
        into.mkdir(parents=True)
        for p in self.files:
            try:
                (into / p.name).symlink_to(p)
            except OSError:  # file systems without symlinks
                shutil.copy2(p, into / p.name)
        return into


def model_folder_name(src: Path, precision: str, execution_provider: str, name: str | None = None) -> str:
    """`smollm2-135m-instruct-q4_1-int8-cpu` from `SmolLM2-135M-Instruct.Q4_1.gguf`, int8, cpu."""
    if name is None:
        src = Path(src)
        name = src.stem if src.suffix.lower() == ".gguf" else src.name
        # A Hugging Face hub cache snapshot is named by commit: use the repository's name instead.
        if src.parent.name == "snapshots" and src.parent.parent.name.startswith("models--"):
            name = src.parent.parent.name.removeprefix("models--").split("--")[-1]
    slug = re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-") or "model"
    return f"{slug}-{precision}-{execution_provider}"


def cached_model(
    src: Path,
    *,
    precision: str = "int8",
    execution_provider: str = "cpu",
    out_root: Path | None = None,
    name: str | None = None,
) -> Path | None:
    """The converted model of `src` if the cache already holds it, intact; None otherwise. Never imports torch."""
    src = Path(src).expanduser().resolve()
    source = _Source.inspect(src)
    precision = resolve_precision(precision, source.is_gguf, execution_provider)
    dest = (Path(out_root) if out_root is not None else models_root()) / model_folder_name(
        src, precision, execution_provider, name
    )
    return dest if _is_cached(dest, source, precision, execution_provider) else None


def resolve_precision(precision: str, is_gguf: bool, execution_provider: str = "cpu") -> str:
    _check_precision(precision)
    if precision == AUTO:
        if is_gguf:
            return "w8a8" if execution_provider == "cpu" else "native"
        return "int8"
    if precision == "w8a8" and execution_provider != "cpu":
        raise ModelError("precision w8a8 runs on the CPU only; use native or int4 for CUDA")
    return precision


def _check_precision(precision: str) -> None:
    if precision != AUTO and precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {AUTO}, {', '.join(PRECISIONS)}")


def _check_kv_cache(kv_cache: str) -> None:
    if kv_cache != AUTO and kv_cache not in KV_CACHES:
        raise ModelError(f"unknown KV cache type {kv_cache!r}; choose one of {AUTO}, {', '.join(KV_CACHES)}")


def _is_cached(dest: Path, source: _Source, precision: str, execution_provider: str, kv_cache: str = AUTO) -> bool:
    try:
        manifest = read_manifest(dest)
    except ModelError:
        return False
    if manifest.precision != precision or manifest.execution_provider != execution_provider:
        return False
    if kv_cache != AUTO and manifest.kv_cache != kv_cache:
        return False
    if manifest.recipe != RECIPE:
        return False  # made with older builder options: convert again
    if manifest.source_fingerprint != source.fingerprint() and manifest.source_sha256 != source.sha256():
        return False
    try:
        validate_model_dir(dest, check_hash=False)
    except ModelError:
        return False
    return True


def convert(
    src: Path,
    *,
    precision: str = "int8",
    execution_provider: str = "cpu",
    out_root: Path | None = None,
    name: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    kv_cache: str = AUTO,
) -> Path:
    """Convert `src` (checkpoint folder or .gguf) into `out_root/<name>-<precision>-<provider>` and return it.

    Returns at once, without importing torch, when the cache already holds this source at this precision.
    Raises ModelError with a user-facing message on any failure, leaving no partial model behind.
    """
    _check_precision(precision)  # before the source: a typo is reported as such, whatever the path
    _check_kv_cache(kv_cache)
    if execution_provider not in EXECUTION_PROVIDERS:
        raise ModelError(
            f"unknown execution provider {execution_provider!r}; choose one of {', '.join(EXECUTION_PROVIDERS)}"
        )
    src = Path(src).expanduser().resolve()
    source = _Source.inspect(src)
    precision = resolve_precision(precision, source.is_gguf, execution_provider)
    out_root = Path(out_root) if out_root is not None else models_root()
    dest = out_root / model_folder_name(src, precision, execution_provider, name)
    if not force and _is_cached(dest, source, precision, execution_provider, kv_cache):
        return dest

    report = progress or (lambda stage, fraction: None)
    out_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{dest.name}-{os.getpid()}-", dir=out_root))
    try:
        fingerprint, source_sha = source.fingerprint(), source.sha256()
        if source.is_gguf:
            checkpoint = _gguf_to_checkpoint(src, tmp / "checkpoint", report)
        else:
            checkpoint = source.stage_view(tmp / "checkpoint")
        built = tmp / "model"
        weights: dict[str, int] = {}
        if precision in ("native", "w8a8"):
            _build_onnx(checkpoint, tmp / "fp32", "fp32", execution_provider, tmp, report)
            weights = _requantize(tmp / "fp32", built, report, calibrate=precision == "w8a8")
        else:
            _build_onnx(checkpoint, built, precision, execution_provider, tmp, report)

        report("finalizing", 0.0)
        kv_cache = _use_kv_attention(built, kv_cache, execution_provider, source.is_gguf)
        # The builder leaves intra_op_num_threads unset, and ONNX Runtime GenAI then ran prefill on one thread.
        _set_session_options(built / GENAI_CONFIG, intra_op_num_threads=_cpu_cores())
        _write_manifest(built, dest.name, src, source_sha, fingerprint, precision, execution_provider, weights,
                        kv_cache)
        validate_model_dir(built)
        _install(built, dest, tmp)
        report("finalizing", 1.0)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_to_checkpoint(gguf: Path, out: Path, report: Progress) -> Path:
    """Dequantize a GGUF file into a float32 safetensors checkpoint the ONNX builder can read."""
    report("reading GGUF", 0.0)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as e:  # transformers raises many types for unsupported or corrupt GGUF files
        raise ModelError(f"cannot read {gguf.name}: {type(e).__name__}: {e}") from e
    report("reading GGUF", 1.0)

    report("writing safetensors", 0.0)
    # The weights are plain float32 now; a leftover GGUF quantizer would make save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report("writing safetensors", 1.0)
    return out


def _build_onnx(checkpoint: Path, out: Path, precision: str, provider: str, tmp: Path, report: Progress) -> None:
    """Run onnxruntime-genai's model builder in a subprocess; its (huge) output goes to a log file."""
    report("building ONNX", 0.0)
    log_path = tmp / "builder.log"
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(checkpoint), "-o", str(out), "-p", precision, "-e", provider,
        "-c", str(tmp / "builder-cache"), "--extra_options", "hf_token=false", *BUILDER_OPTIONS,
    ]
    # GIT_DIR: the builder stamps the model with `git rev-parse HEAD` run five folders above itself, which in a
    # virtual environment inside a project is that project's commit; with no repository it takes its own release's.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "GIT_DIR": os.devnull}
    with open(log_path, "wb") as log:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not (out / MODEL_FILE).is_file():
        raise ModelError(f"building the ONNX model failed (exit status {rc}):\n{_log_tail(log_path)}")
    if not (out / "tokenizer.json").is_file():
        raise ModelError("the converted model has no tokenizer.json; the checkpoint's tokenizer is not supported")
    report("building ONNX", 1.0)


def _requantize(fp32: Path, out: Path, report: Progress, calibrate: bool = False) -> dict[str, int]:
    """The float32 build with its MatMul weights as MatMulNBits blocks (the GGUF's own where they are exact);
    with `calibrate`, the projections w8a8 takes as smoothed int8 (requantize.py)."""
    from ghostls.inference.converter.requantize import rewrite_file

    report("requantizing", 0.0)
    out.mkdir()
    for f in fp32.iterdir():
        if f.is_file() and f.name not in (MODEL_FILE, MODEL_DATA_FILE):
            shutil.copy2(f, out / f.name)
    prompts, head_size = None, 0
    if calibrate:
        config = json.loads((fp32 / GENAI_CONFIG).read_text(encoding="utf-8"))["model"]
        prompts = _calibration_prompts(fp32 / "tokenizer.json", config.get("context_length"))
        head_size = config["decoder"]["head_size"]
    kinds = rewrite_file(fp32 / MODEL_FILE, out / MODEL_FILE, MODEL_DATA_FILE, calibration=prompts,
                         head_size=head_size)
    report("requantizing", 1.0)
    return dict(kinds)


def _use_kv_attention(model_dir: Path, kv_cache: str, execution_provider: str, is_gguf: bool) -> str:
    """Swap in ghostls's attention op for the KV cache type asked for, where possible, and fold the small nodes
    around it into ghostls's ops; returns the KV cache type the model ends with. "auto" keeps float32 where the
    op cannot be had (saying why on stderr); an explicit type not met is an error."""
    import onnx

    from ghostls.inference.converter.ops import fuse_small_nodes, kv_attention, library

    wanted = ("int8" if is_gguf else "float16") if kv_cache == AUTO else kv_cache
    model = onnx.load(str(model_dir / MODEL_FILE), load_external_data=False)  # the graph; weights stay on disk
    if wanted != "float32" and execution_provider == "cpu" and _kv_cache_type(model) == "float32":
        head_size = json.loads((model_dir / GENAI_CONFIG).read_text(encoding="utf-8"))["model"]["decoder"]["head_size"]
        try:
            built_library = library.build()
        except ModelError as e:
            if kv_cache != AUTO:
                raise
            print(f"ghostls: keeping a float32 KV cache: {e}", file=sys.stderr)
        else:
            if kv_attention.swap_attention(model, head_size, wanted):
                # The folds repack W8A8 weights: all of them are read in, and written out anew.
                onnx.load_external_data_for_model(model, str(model_dir))
                fuse_small_nodes(model)
                (model_dir / MODEL_DATA_FILE).unlink(missing_ok=True)
                onnx.save_model(model, str(model_dir / MODEL_FILE), save_as_external_data=True,
                                all_tensors_to_one_file=True, location=MODEL_DATA_FILE, size_threshold=1024)
                _set_session_options(model_dir / GENAI_CONFIG,
                                     custom_ops_library=library.install(model_dir, built_library))
            elif kv_cache != AUTO:
                raise ModelError(
                    "this model's attention is not one ghostls's KV cache op stands in for (it takes packed "
                    "q|k|v, rotary over the whole head, float32 activations, head size "
                    f"{', '.join(map(str, kv_attention.HEAD_SIZES))}); convert with --kv-cache float32")
    found = _kv_cache_type(model)
    if kv_cache != AUTO and found != kv_cache:
        raise ModelError(f"asked for a {kv_cache} KV cache, but this {execution_provider} model keeps {found}")
    return found


def _kv_cache_type(model) -> str:
    from onnx import TensorProto

    past = next((v for v in model.graph.input if v.name.startswith("past_key_values.")), None)
    if past is None:
        return "none"
    kind = past.type.tensor_type.elem_type
    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT8: "int8"}
    return names.get(kind) or TensorProto.DataType.Name(kind)


def _calibration_prompts(tokenizer_file: Path, context_length: int | None) -> list[list[int]]:
    """Token ids of the calibration prompts, no longer than the model's context."""
    import importlib

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    length = min(_CALIBRATION_TOKENS, int(context_length or _CALIBRATION_TOKENS))
    prompts = []
    for module in _CALIBRATION_MODULES:
        source = Path(importlib.import_module(module).__file__).read_text(encoding="utf-8")
        prompts.append(tokenizer.encode(source, add_special_tokens=False).ids[:length])
    return prompts


def _log_tail(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    # tqdm redraws with carriage returns: keep only the last state of each line.
    lines = [line.split("\r")[-1] for line in text.splitlines()]
    return "\n".join(lines)[-_LOG_TAIL_CHARS:]


def _set_session_options(config_path: Path, **options) -> None:
    """Set onnxruntime session options in genai_config.json's decoder section."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model"]["decoder"].setdefault("session_options", {}).update(options)
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    except AttributeError:
        return os.cpu_count() or 1


def _write_manifest(
    built: Path,
    name: str,
    src: Path,
    source_sha: str,
    fingerprint: list[list],
    precision: str,
    execution_provider: str,
    weights: dict[str, int],
    kv_cache: str = "float32",
) -> ModelManifest:
    template = detect_template(tokens_of_tokenizer_json(built / "tokenizer.json"))
    config = json.loads((built / GENAI_CONFIG).read_text(encoding="utf-8"))
    sizes = {f: (built / f).stat().st_size for f in (MODEL_FILE, MODEL_DATA_FILE) if (built / f).is_file()}
    manifest = ModelManifest(
        name=name,
        source=str(src),
        source_sha256=source_sha,
        precision=precision,
        execution_provider=execution_provider,
        architecture=config["model"].get("type", "unknown"),
        fim_family=template.family,
        fim_tokens=template.tokens,
        stop=list(template.stop),
        converter_versions=converter_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        file_sizes=sizes,
        model_sha256=sha256_file(built / MODEL_FILE),
        source_fingerprint=fingerprint,
        recipe=RECIPE,
        weights=weights,
        kv_cache=kv_cache,
    )
    (built / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def converter_versions() -> dict[str, str]:
    from importlib import metadata

    def version(*dists: str) -> str:
        for dist in dists:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return "not installed"

    return {
        "ghostls": version("ghostls"),
        "onnxruntime-genai": version("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml"),
        "transformers": version("transformers"),
        "torch": version("torch"),
        "onnx": version("onnx"),
    }


def _install(built: Path, dest: Path, tmp: Path) -> None:
    # os.replace cannot overwrite a non-empty folder: move an old model aside into our temp folder first
    # (deleted with it), so readers see the old model or the new one, never a mix.
    if dest.exists():
        os.replace(dest, tmp / "replaced")
    os.replace(built, dest)


def _remove_stale_temp_dirs(out_root: Path) -> None:
    """Delete temp folders of conversions whose process is gone (killed, crashed, machine rebooted)."""
    for d in out_root.glob(f"{_TEMP_PREFIX}*"):
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def convert_in_subprocess(
    src: Path,
    precision: str = "int8",
    progress: Progress | None = None,
    *,
    execution_provider: str = "cpu",
    out_root: Path | None = None,
    name: str | None = None,
    force: bool = False,
    kv_cache: str = AUTO,
) -> Path:
    """Run `convert` in a child Python (so torch never loads here), relaying its progress events."""
    cmd = [
        sys.executable, "-m", "ghostls.inference.converter.convert", str(src),
        "--precision", precision, "--execution-provider", execution_provider, "--kv-cache", kv_cache,
        "--json-progress",
    ]
    if out_root is not None:
        cmd += ["--out-root", str(out_root)]
    if name is not None:
        cmd += ["--name", name]
    if force:
        cmd.append("--force")
    done: Path | None = None
    error: str | None = None
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # stray output of a library
                if not isinstance(event, dict):
                    continue
                if "stage" in event and progress is not None:
                    progress(str(event["stage"]), float(event.get("fraction", 0.0)))
                elif "done" in event:
                    done = Path(event["done"])
                elif "error" in event:
                    error = str(event["error"])
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if error is not None:
            raise ModelError(error)
        if rc != 0 or done is None:
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", errors="replace")[-_LOG_TAIL_CHARS:]
            raise ModelError(f"model conversion exited with status {rc}:\n{tail}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ghostls.inference.converter.convert",
        description="Convert a Hugging Face checkpoint folder or a .gguf file into a ghostls ONNX model.",
    )
    parser.add_argument("src", type=Path, help="checkpoint folder (config.json + *.safetensors) or .gguf file")
    parser.add_argument("--precision", default=AUTO, choices=(AUTO, *PRECISIONS))
    parser.add_argument("--execution-provider", default="cpu", choices=EXECUTION_PROVIDERS)
    parser.add_argument("--kv-cache", default=AUTO, choices=(AUTO, *KV_CACHES),
                        help="the KV cache's type on the CPU (auto: int8 for a .gguf, float16 for a checkpoint, "
                        "where ghostls's attention op runs; float32 otherwise)")
    parser.add_argument("--out-root", type=Path, default=None, help="cache folder (default: the ghostls cache)")
    parser.add_argument("--name", default=None, help="model name (default: derived from the source)")
    parser.add_argument("--force", action="store_true", help="convert again even if the cache holds the model")
    parser.add_argument("--json-progress", action="store_true", help="print one JSON event per line on stdout")
    args = parser.parse_args(argv)

    if args.json_progress:
        # stdout carries only our JSON events: anything a library prints goes to stderr instead.
        events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

        def emit(event: dict) -> None:
            events.write(json.dumps(event, ensure_ascii=False) + "\n")
    else:
        def emit(event: dict) -> None:
            if "stage" in event:
                print(f"{event['stage']}: {event['fraction']:.0%}", file=sys.stderr)
            else:
                print(event.get("done") or f"error: {event['error']}")

    try:
        path = convert(
            args.src,
            precision=args.precision,
            execution_provider=args.execution_provider,
            out_root=args.out_root,
            name=args.name,
            force=args.force,
            progress=lambda stage, fraction: emit({"stage": stage, "fraction": fraction}),
            kv_cache=args.kv_cache,
        )
    except ModelError as e:
        emit({"error": str(e)})
        return 1
    except Exception as e:  # report, don't dump a traceback on the editor's status line
        emit({"error": f"model conversion failed: {type(e).__name__}: {e}"})
        return 1
    emit({"done": str(path)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
