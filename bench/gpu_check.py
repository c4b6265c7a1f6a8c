"""The GPU check: is CUDA really the provider running, and how close does decoding come to the roofline?

Builds a Qwen2-architecture checkpoint with random weights from a config (weights do not change speed),
converts it with onnxruntime-genai's builder exactly as ghostls's converter does, then measures time to
first token for 1,000-token prompts, 16-token completions, and decode tokens/s, beside transformers' generate on
the same weights in the same run (the peer), and with CUDA graphs on as well as off; then ghostls's own converter
and engine on the same checkpoint (prefix reuse as the user types and deletes, checked against a fresh cache).
The roofline is the
memory-bandwidth limit of decoding: every new token reads every weight once, so
tokens/s ≤ bandwidth / weight bytes. Without a GPU it runs the same steps on the CPU with a small config,
so the script is known to work before GPU minutes are spent.

    bench/gpu_check.sh [--size small|1.5b] [--precisions int4,fp16] [--out DIR]

Exit status 1 when CUDA was asked for (or a GPU is present) but a session does not really run on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Qwen2.5-1.5B's shapes (the GPU target); "small" keeps the CPU dry run to seconds.
CONFIGS = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True),
}
# Peak memory bandwidth by card name fragment, GB/s (vendor figures).
BANDWIDTH_GBS = {"H200": 4800.0, "H100 NVL": 3900.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0}


def has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def build_checkpoint(size: str, out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").is_file():
        return out
    config = Qwen2Config(**CONFIGS[size], max_position_embeddings=4096, rope_theta=1e6, torch_dtype="float16")
    torch.manual_seed(0)
    # Random initialisation of 1.5B parameters takes about a minute on the CPU and a second on the GPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.float16)
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_onnx(checkpoint: Path, outs: dict[str, Path], provider: str) -> None:
    """Convert the checkpoint once per precision (outs: precision -> folder), the builders side by side."""
    try:
        from ghostls.inference.converter.convert import BUILDER_OPTIONS
    except ImportError:  # the GPU machine runs this file from a bare copy of the tree, ghostls not installed
        BUILDER_OPTIONS = ("prune_lm_head=true",)

    running = {}
    for precision, out in outs.items():
        if (out / "genai_config.json").is_file():
            continue
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
               "-p", precision, "-e", provider, "-c", str(out.parent / f"cache-{out.name}"),
               "--extra_options", "hf_token=false", *BUILDER_OPTIONS]
        log = out.parent / f"{out.name}.log"
        with open(log, "wb") as f:
            running[precision] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "HF_HUB_OFFLINE": "1"}), log)
    for precision, (process, log) in running.items():
        if process.wait() != 0:
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise SystemExit(f"builder failed for {precision}/{provider}; see {log}")


def session_providers(model_dir: Path, provider: str) -> list[str]:
    """The providers an ONNX Runtime session on this model really got (a silent CPU fallback shows here)."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and provider == "cuda":
        ort.preload_dlls()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=wanted)
    return session.get_providers()


def measure(model_dir: Path, provider: str, prompt_tokens: int, new_tokens: int, runs: int,
            cuda_graph: bool = False) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()
    if provider == "cuda":
        config.append_provider("cuda")  # what ghostls's engine does
        if cuda_graph:  # one replayed graph per decode step instead of a launch per kernel
            config.set_provider_option("cuda", "enable_cuda_graph", "1")
    else:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": len(os.sched_getaffinity(0))}}}}))
    model = og.Model(config)
    vocab = json.loads((model_dir / "genai_config.json").read_text())["model"]["vocab_size"]
    rng = np.random.default_rng(0)
    ttft, total, decode = [], [], []
    for run in range(runs + 1):  # the first run warms up (kernels, allocations) and is not counted
        ids = rng.integers(10, vocab - 10, size=prompt_tokens).tolist()
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=prompt_tokens + new_tokens + 1)
        generator = og.Generator(model, params)
        started = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
        end = time.perf_counter()
        if run:
            ttft.append(first - started)
            total.append(end - started)
            decode.append((new_tokens - 1) / (end - first))
    weights = sum(f.stat().st_size for f in model_dir.iterdir() if f.name.startswith("model.onnx"))
    return {"ttft_ms_p50": 1000 * statistics.median(ttft), "total_ms_p50": 1000 * statistics.median(total),
            "decode_tps_p50": statistics.median(decode), "weight_bytes": weights}


def measure_transformers(checkpoint: Path, provider: str, prompt_tokens: int, new_tokens: int, runs: int) -> dict:
    """The peer in the same run: transformers' greedy generate on the same weights (fp16 on CUDA, float32 on
    the CPU). Time to first token is a one-token generate; decode speed comes from the difference to the whole."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if provider == "cuda" else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    generator = torch.Generator().manual_seed(0)

    def generate(ids, n: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    ttft, total = [], []
    for run in range(runs + 1):  # the first run warms up and is not counted
        ids = torch.randint(10, model.config.vocab_size - 10, (1, prompt_tokens), generator=generator).to(device)
        first, whole = generate(ids, 1), generate(ids, new_tokens)
        if run:
            ttft.append(first)
            total.append(whole)
    return {"ttft_ms_p50": 1000 * statistics.median(ttft), "total_ms_p50": 1000 * statistics.median(total),
            "decode_tps_p50": (new_tokens - 1) / (statistics.median(total) - statistics.median(ttft))}


def bandwidth_gbs(provider: str) -> tuple[float, str]:
    """The memory bandwidth decoding is bounded by: the card's figure, or a measured copy on the CPU."""
    if provider == "cuda":
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip()
        for fragment, gbs in BANDWIDTH_GBS.items():
            if fragment in name:
                return gbs, name
        return float("nan"), name or "unknown GPU"
    import numpy as np

    a = np.ones(64 * 2**20, dtype=np.float64)  # 512 MiB: far past every cache
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9, "CPU (measured copy, read + write)"


def add_tokenizer(checkpoint: Path, vocab_size: int = 4096) -> None:
    """A byte-level BPE tokenizer for the random checkpoint (ghostls's engine loads tokenizer.json), trained on
    this repository's Python files; its first id is the end-of-text token the model's config names."""
    if (checkpoint / "tokenizer.json").is_file():
        return
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f.read_text(errors="replace") for f in sorted(Path(__file__).parents[1].glob("*/*.py"))]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.save(str(checkpoint / "tokenizer.json"))
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(bos_token_id=0, eos_token_id=0)
    (checkpoint / "config.json").write_text(json.dumps(config, indent=2))


def product_engine(checkpoint: Path, work: Path, provider: str, prompt_tokens: int, new_tokens: int) -> dict:
    """ghostls's own converter and Engine on this provider, as a user's editor runs them: the int4 conversion, a
    fresh completion of a long prompt, then that prompt grown by a few typed tokens and cut back by a few
    (backspace), each reusing the document's KV cache; each answer is checked token for token against the same
    prompt on an empty cache."""
    try:
        from ghostls.inference.converter.convert import convert
        from ghostls.inference.engine import Engine, GenerationRequest
    except ImportError as exc:
        return {"error": f"ghostls not importable: {exc}"}
    import numpy as np

    add_tokenizer(checkpoint)
    started = time.perf_counter()
    model_dir = convert(checkpoint, precision="int4", execution_provider=provider, out_root=work / "ghostls-models")
    convert_s = time.perf_counter() - started
    engine = Engine(model_dir, provider=provider)
    vocab = engine.tokenizer.get_vocab_size()
    ids = np.random.default_rng(1).integers(10, vocab - 10, size=prompt_tokens).tolist()

    def complete(prompt: list[int], fresh: bool):
        if fresh:
            engine.reset("doc")
        return engine.generate(GenerationRequest(tuple(prompt), max_new_tokens=new_tokens, time_budget_s=60,
                                                 cache_key="doc"))

    complete(ids, True)  # warm-up: kernels, allocations
    first = complete(ids, True)
    typed = ids + list(first.token_ids[:4])
    grown, grown_fresh = complete(typed, False), complete(typed, True)
    complete(ids, True)
    back, back_fresh = complete(ids[:-8], False), complete(ids[:-8], True)
    return {
        "provider": f"{engine.provider.name}: {engine.provider.reason}", "convert_s": round(convert_s, 1),
        "prefill_chunk": engine.prefill_chunk,
        "fresh_first_token_ms": 1000 * first.first_token_s, "fresh_total_ms": 1000 * (first.prefill_s + first.decode_s),
        "typed_reused_tokens": grown.reused_tokens, "typed_first_token_ms": 1000 * grown.first_token_s,
        "typed_total_ms": 1000 * (grown.prefill_s + grown.decode_s),
        "backspace_reused_tokens": back.reused_tokens, "backspace_first_token_ms": 1000 * back.first_token_s,
        "typed_same_as_fresh": grown.token_ids == grown_fresh.token_ids,
        "backspace_same_as_fresh": back.token_ids == back_fresh.token_ids,
        "new_tokens": [len(first.token_ids), len(grown.token_ids), len(back.token_ids)],
    }


def product_provider_choice() -> str:
    """What ghostls's own start-up probe chooses here (the GPU machine imports it from a bare tree)."""
    try:
        from ghostls.inference.provider import choose_provider
    except ImportError as exc:
        return f"ghostls not importable: {exc}"
    choice = choose_provider("auto")
    return f"{choice.name}: {choice.reason}"


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(CONFIGS), help="default: 1.5b on a GPU, small on the CPU")
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precisions", default=None, help="default: int4,fp16 on CUDA, int4,int8 on the CPU")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/ghostls-gpu-check"))
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="where gpu_check.json is written")
    args = parser.parse_args(argv)

    provider = args.provider if args.provider != "auto" else ("cuda" if has_gpu() else "cpu")
    size = args.size or ("1.5b" if provider == "cuda" else "small")
    precisions = (args.precisions or ("int4,fp16" if provider == "cuda" else "int4,int8")).split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(size, work / f"qwen2-{size}-hf")
    gbs, device = bandwidth_gbs(provider)
    report = {"device": device, "provider": provider, "size": size, "bandwidth_gbs": gbs,
              "ghostls_provider_choice": product_provider_choice(), "results": {}}
    failed = False
    model_dirs = {precision: work / f"qwen2-{size}-{precision}-{provider}" for precision in precisions}
    started = time.perf_counter()
    build_onnx(checkpoint, model_dirs, provider)
    report["build_s"] = round(time.perf_counter() - started, 1)
    for precision, model_dir in model_dirs.items():
        providers = session_providers(model_dir, provider)
        really = "CUDAExecutionProvider" in providers if provider == "cuda" else True
        failed |= not really
        row = {"session_providers": providers, "cuda_really_used": really if provider == "cuda" else None}
        if really:
            row.update(measure(model_dir, provider, args.prompt_tokens, args.new_tokens, args.runs))
            roofline_tps = gbs * 1e9 / row["weight_bytes"]
            row["roofline_tps"] = roofline_tps
            row["roofline_fraction"] = row["decode_tps_p50"] / roofline_tps
            if provider == "cuda":  # what CUDA graphs would give, for the choice of the engine's options
                try:
                    graph = measure(model_dir, provider, args.prompt_tokens, args.new_tokens, args.runs, True)
                    row["cuda_graph"] = {**graph, "roofline_fraction": graph["decode_tps_p50"] / roofline_tps}
                except Exception as exc:  # noqa: BLE001 - reported, the plain figures stand
                    row["cuda_graph"] = {"error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
        report["results"][precision] = row
        print(f"{precision}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in row.items()), flush=True)
    try:
        report["ghostls_engine"] = product_engine(checkpoint, work, provider, args.prompt_tokens, args.new_tokens)
    except Exception as exc:  # noqa: BLE001 - reported; the figures above stand
        report["ghostls_engine"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    print("ghostls engine:", json.dumps(report["ghostls_engine"]), flush=True)
    peer = measure_transformers(checkpoint, provider, args.prompt_tokens, args.new_tokens, args.runs)
    report["peer_transformers"] = peer
    for row in report["results"].values():  # how many times quicker than the peer, 16 tokens end to end
        if "total_ms_p50" in row:
            row["total_speedup_vs_transformers"] = peer["total_ms_p50"] / row["total_ms_p50"]
    print("transformers: " + ", ".join(f"{k} {v:.3g}" for k, v in peer.items()), flush=True)
    if provider == "cuda" or has_gpu():
        report["targets"] = {"p50_under_25ms": {p: r.get("total_ms_p50", 1e9) < 25 for p, r in report["results"].items()},
                             "decode_at_least_60pct_roofline": {p: r.get("roofline_fraction", 0) >= 0.6
                                                                for p, r in report["results"].items()}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if failed:
        print("FAIL: CUDA was asked for but the session runs on", providers, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
