"""`ghostls bench`: ghostls's engine beside llama.cpp and transformers, on the same weights, in one run.

Every engine runs in a worker process of its own, so that its load time and peak memory are its own; the
driver feeds all of them the same token ids, interleaved prompt by prompt, so that a busy machine slows
every engine alike. The weights are the embedded model's: ghostls runs its converted ONNX model,
llama.cpp (llama-cpp-python) the GGUF file itself, and transformers the GGUF dequantized to float32,
which is also the reference that greedy agreement is counted against.

    ghostls bench [--engines ghostls,llamacpp,transformers] [--sizes 300,1000,2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("ghostls", "llamacpp", "transformers")
REFERENCE = "transformers"  # float32: what the quantized engines are compared against
# Real source files from the standard library, long enough for the largest prompt.
SOURCE_MODULES = ("inspect", "argparse", "typing", "pathlib", "subprocess", "tarfile")


# -- the workers --------------------------------------------------------------------------------

class Worker:
    """One engine behind the same four calls. Subclasses own the model; `run` decodes greedily."""

    name = ""

    def run(self, ids: list[int], max_new: int, *, cold: bool, cancelled=lambda: False) -> dict:
        raise NotImplementedError

    def typing(self, prompts: list[list[int]], interval_s: float, max_new: int) -> dict:
        """Keystrokes `interval_s` apart, each superseding the generation for the one before it.

        A generation thread always works on the newest prompt; a newer keystroke cancels the running
        one at the engine's next chance (between tokens, or between prefill chunks where the engine
        allows it). Returns the time from the last keystroke to its completion.
        """
        latest = {"seq": -1, "stop": False}
        cond = threading.Condition()
        finished: dict[int, float] = {}
        counts = {"cancelled": 0, "completed": 0}

        def generate_newest() -> None:
            handled = -1
            while True:
                with cond:
                    cond.wait_for(lambda: latest["seq"] != handled or latest["stop"])
                    if latest["stop"]:
                        return
                    seq = latest["seq"]
                result = self.run(prompts[seq], max_new, cold=False, cancelled=lambda: latest["seq"] != seq)
                handled = seq
                if result["cancelled"]:
                    counts["cancelled"] += 1
                else:
                    counts["completed"] += 1
                    finished[seq] = time.perf_counter()
                    with cond:
                        cond.notify_all()

        thread = threading.Thread(target=generate_newest, daemon=True)
        thread.start()
        start = time.perf_counter()
        last = len(prompts) - 1
        for seq in range(len(prompts)):
            time.sleep(max(0.0, start + seq * interval_s - time.perf_counter()))
            with cond:
                latest["seq"] = seq
                cond.notify_all()
        typed_last = time.perf_counter()
        with cond:
            cond.wait_for(lambda: last in finished, timeout=600)
            latest["stop"] = True
            cond.notify_all()
        thread.join(timeout=600)
        return {"last_keystroke_to_completion_s": finished[last] - typed_last, **counts}


def _timed_loop(tokens, max_new: int, eos: set[int], cancelled, started: float) -> dict:
    """Drains a token iterator the same way for every engine: stop at EOS, max_new or a cancel."""
    out: list[int] = []
    first = None
    was_cancelled = False
    for token in tokens:
        if first is None:
            first = time.perf_counter()
        if token in eos:
            break
        out.append(int(token))
        if len(out) >= max_new:
            break
        if cancelled():
            was_cancelled = True
            break
    end = time.perf_counter()
    if first is None:  # cancelled before the first token
        return {"ids": [], "ttft_s": None, "total_s": end - started, "decode_tps": None, "cancelled": True}
    decode_tps = (len(out) - 1) / (end - first) if len(out) > 1 and end > first else None
    return {"ids": out, "ttft_s": first - started, "total_s": end - started, "decode_tps": decode_tps,
            "cancelled": was_cancelled}


class GhostlsWorker(Worker):
    name = "ghostls"

    def __init__(self, threads: int, model_dir: Path | None = None):
        from ghostls.inference import embedded
        from ghostls.inference.engine import Engine

        started = time.perf_counter()
        folder = model_dir or embedded.ensure_embedded_model(in_subprocess=False)
        self.engine = Engine(folder, provider="cpu", threads=threads)
        self.load_s = time.perf_counter() - started
        self.model_bytes = sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())
        self.detail = f"{Path(folder).name} (onnxruntime-genai, {self.engine.manifest.precision})"

    def run(self, ids, max_new, *, cold, cancelled=lambda: False):
        from ghostls.inference.engine import GenerationRequest

        if cold:
            self.engine.reset()
        started = time.perf_counter()
        # The engine checks `cancelled` between tokens and between prefill chunks itself.
        result = self.engine.generate(GenerationRequest(tuple(ids), max_new_tokens=max_new, time_budget_s=600),
                                      cancelled=cancelled)
        end = time.perf_counter()
        n = len(result.token_ids)
        first = result.first_token_s
        decode_s = end - started - first if first is not None else 0.0
        return {"ids": list(result.token_ids), "ttft_s": first, "total_s": end - started,
                "decode_tps": (n - 1) / decode_s if n > 1 and decode_s > 0 else None,
                "cancelled": result.stop_reason == "cancelled", "reused": result.reused_tokens}


def without_llama_cpp_extra_buffers() -> None:
    """Turns off llama.cpp's extra buffer types (AMX weight repacking), which crash on this project's CPUs, for
    every model this process loads after it. Llama() has no argument for them (an unknown keyword is silently
    ignored) and starts from llama.cpp's model defaults, which this replaces."""
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params

    def without_extra_bufts():
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_extra_bufts


class LlamaCppWorker(Worker):
    name = "llamacpp"

    def __init__(self, threads: int, gguf: Path):
        from llama_cpp import Llama, __version__

        without_llama_cpp_extra_buffers()  # the worker is a process of its own: this changes nothing else
        started = time.perf_counter()
        self.llm = Llama(model_path=str(gguf), n_ctx=4096, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self.load_s = time.perf_counter() - started
        self.model_bytes = gguf.stat().st_size
        self.eos = {self.llm.token_eos()}
        self.detail = f"{gguf.name} (llama-cpp-python {__version__})"

    def run(self, ids, max_new, *, cold, cancelled=lambda: False):
        if cold:
            self.llm.reset()  # forget the cached prefix: the next prompt is evaluated in full
        started = time.perf_counter()
        # llama-cpp-python reuses its KV cache for the longest prefix shared with the previous prompt;
        # the prompt itself is evaluated in one call, so a cancel is seen only from the first token on.
        tokens = self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        return _timed_loop(tokens, max_new, self.eos, cancelled, started)


class TransformersWorker(Worker):
    name = "transformers"

    def __init__(self, threads: int, gguf: Path):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        started = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                          local_files_only=True).eval()
        self.load_s = time.perf_counter() - started
        self.model_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        eos = self.model.config.eos_token_id
        self.eos = set(eos) if isinstance(eos, list) else {eos}
        self.cache = None
        self.cached: list[int] = []
        self.detail = f"{gguf.name} dequantized to float32 (transformers {transformers.__version__})"

    def _tokens(self, ids: list[int]):
        import torch
        from transformers import DynamicCache

        from ghostls.inference.engine import common_prefix_length

        # The same reuse rule as the other engines: keep the longest common prefix, feed the rest.
        reused = min(common_prefix_length(self.cached, ids), len(ids) - 1) if self.cache is not None else 0
        if reused:
            if (extra := self.cache.get_seq_length() - reused) > 0:
                self.cache.crop(-extra)  # this transformers counts the tokens to drop, negated
        else:
            self.cache = DynamicCache()
        self.cached = list(ids[:reused])
        feed = ids[reused:]
        with torch.inference_mode():
            while True:
                out = self.model(input_ids=torch.tensor([feed]), past_key_values=self.cache, use_cache=True,
                                 logits_to_keep=1)
                self.cached.extend(feed)
                token = int(out.logits[0, -1].argmax())
                yield token
                feed = [token]

    def run(self, ids, max_new, *, cold, cancelled=lambda: False):
        if cold:
            self.cache = None
        started = time.perf_counter()
        return _timed_loop(self._tokens(ids), max_new, self.eos, cancelled, started)


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def worker_main(name: str, threads: int, model_dir: str | None) -> int:
    """Serves one engine over stdin/stdout, one JSON object a line each way."""
    from ghostls.inference import embedded

    out = sys.stdout
    sys.stdout = sys.stderr  # a library's print must not corrupt the protocol
    try:
        if name == "ghostls":
            worker: Worker = GhostlsWorker(threads, Path(model_dir) if model_dir else None)
        elif name == "llamacpp":
            worker = LlamaCppWorker(threads, embedded.embedded_gguf_path())
        else:
            worker = TransformersWorker(threads, embedded.embedded_gguf_path())
        reply = {"load_s": worker.load_s, "model_bytes": worker.model_bytes, "detail": worker.detail}
    except Exception as e:  # the driver reports the engine as unavailable and goes on without it
        reply = {"error": f"{type(e).__name__}: {e}"}
    out.write(json.dumps(reply) + "\n")
    out.flush()
    if "error" in reply:
        return 1
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            reply = worker.run(request["ids"], request["max_new"], cold=request["cold"])
        elif request["op"] == "typing":
            reply = worker.typing(request["prompts"], request["interval_s"], request["max_new"])
        else:
            reply = {"peak_rss_bytes": _peak_rss_bytes()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


# -- the driver ---------------------------------------------------------------------------------

@dataclass
class EngineProcess:
    name: str
    proc: subprocess.Popen
    info: dict

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def start_engine(name: str, threads: int, model_dir: str | None) -> EngineProcess | str:
    cmd = [sys.executable, "-m", "ghostls.cli.bench", "--worker", name, "--threads", str(threads)]
    if model_dir:
        cmd += ["--model", model_dir]
    # Each engine gets the same thread count; OpenMP/BLAS pools are pinned to it too.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    info = json.loads(proc.stdout.readline() or '{"error": "the worker exited at start"}')
    if "error" in info:
        proc.wait(timeout=30)
        return info["error"]
    return EngineProcess(name, proc, info)


def load_prompts(tokenizer, sizes: list[int], per_size: int) -> dict[int, list[dict]]:
    """For each size, `per_size` real files cut after that many tokens, plus the text that follows."""
    import importlib

    prompts: dict[int, list[dict]] = {size: [] for size in sizes}
    for module_name in SOURCE_MODULES:
        source = Path(importlib.import_module(module_name).__file__).read_text(encoding="utf-8")
        encoding = tokenizer.encode(source)
        for size in sizes:
            if len(prompts[size]) >= per_size or len(encoding.ids) < size + 200:
                continue
            cut = encoding.offsets[size - 1][1]
            prompts[size].append({"file": module_name, "text": source[:cut], "next": source[cut:]})
    return prompts


def agreement(ids: list[int], reference: list[int]) -> int:
    """Leading tokens equal to the reference's: after the first difference the texts are different."""
    n = 0
    for a, b in zip(ids, reference):
        if a != b:
            break
        n += 1
    return n


def _pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run_bench(args) -> dict:
    from tokenizers import Tokenizer

    from ghostls.inference import embedded

    threads = args.threads or len(os.sched_getaffinity(0))
    model_dir = args.model or str(embedded.ensure_embedded_model(in_subprocess=True))
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    sizes = [int(s) for s in args.sizes.split(",")]
    prompts = load_prompts(tokenizer, sizes, args.prompts)

    engines: dict[str, EngineProcess] = {}
    unavailable: dict[str, str] = {}
    for name in args.engines.split(","):
        started = start_engine(name, threads, model_dir if name == "ghostls" else None)
        if isinstance(started, str):
            unavailable[name] = started
        else:
            engines[name] = started

    def ids_of(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    runs: dict[str, list[dict]] = {name: [] for name in engines}
    # Interleaved: every prompt goes through every engine before the next prompt, and the engine that goes
    # first turns from prompt to prompt: in A/B runs of two models in one process (docs/benchmarks.md),
    # whichever ran second decoded 10-12% quicker in both orders of one pair of runs; a fixed order would hand
    # such an effect to one engine.
    turn = 0
    for repeat in range(args.repeats):
        for size in sizes:
            for prompt in prompts[size]:
                ids = ids_of(prompt["text"])
                outputs = {}
                order = list(engines.items())
                order = order[turn % len(order):] + order[:turn % len(order)]
                turn += 1
                for name, engine in order:
                    result = engine.call(op="run", ids=ids, max_new=args.new_tokens, cold=True)
                    outputs[name] = result["ids"]
                    runs[name].append({"size": size, "file": prompt["file"], "repeat": repeat, **result,
                                       "new_tokens": len(result["ids"])})
                if REFERENCE in outputs:
                    for name in engines:
                        runs[name][-1]["agree"] = agreement(outputs[name], outputs[REFERENCE])

    # Keystroke: the largest prompt cold, then one more character, then one more line, each reusing
    # the cache left by the one before.
    keystroke: dict[str, dict] = {name: {} for name in engines}
    for prompt in prompts[max(sizes)][:1]:
        text, following = prompt["text"], prompt["next"]
        char = text + following[:1]
        line = char + following[1:following.index("\n", 1) + 1] if "\n" in following[1:] else char + "\n"
        for name, engine in engines.items():
            cold = engine.call(op="run", ids=ids_of(text), max_new=args.new_tokens, cold=True)
            one_char = engine.call(op="run", ids=ids_of(char), max_new=args.new_tokens, cold=False)
            one_line = engine.call(op="run", ids=ids_of(line), max_new=args.new_tokens, cold=False)
            keystroke[name] = {"cold_ttft_s": cold["ttft_s"], "char_ttft_s": one_char["ttft_s"],
                               "line_ttft_s": one_line["ttft_s"]}

    # Typing: ten keystrokes 80 ms apart into the largest-but-one prompt, stale requests cancelled.
    typing: dict[str, dict] = {}
    base = prompts[sizes[len(sizes) // 2]][:1]
    for prompt in base:
        texts = [prompt["text"] + prompt["next"][:i] for i in range(1, args.keystrokes + 1)]
        for name, engine in engines.items():
            engine.call(op="run", ids=ids_of(prompt["text"]), max_new=args.new_tokens, cold=True)
            typing[name] = engine.call(op="typing", prompts=[ids_of(t) for t in texts],
                                       interval_s=args.interval_ms / 1000, max_new=args.new_tokens)

    report = {
        "machine": machine(),
        "settings": {"threads": threads, "new_tokens": args.new_tokens, "sizes": sizes, "repeats": args.repeats,
                     "prompts_per_size": args.prompts, "files": sorted({p["file"] for ps in prompts.values()
                                                                         for p in ps})},
        "engines": {}, "unavailable": unavailable,
    }
    for name, engine in engines.items():
        rows = runs[name]
        per_size = {}
        for size in sizes:
            mine = [r for r in rows if r["size"] == size]
            per_size[size] = {
                "ttft_s_p50": _pct([r["ttft_s"] for r in mine], 0.5),
                "decode_tps_p50": _pct([r["decode_tps"] for r in mine], 0.5),
                "total_s_p50": _pct([r["total_s"] for r in mine], 0.5),
                "total_s_p95": _pct([r["total_s"] for r in mine], 0.95),
                "agree_mean": (statistics.mean(r["agree"] for r in mine) if mine and "agree" in mine[0] else None),
                "new_tokens_mean": statistics.mean(r["new_tokens"] for r in mine) if mine else None,
            }
        report["engines"][name] = {
            **engine.info,
            "peak_rss_bytes": engine.call(op="rss")["peak_rss_bytes"],
            "total_s_p50": _pct([r["total_s"] for r in rows], 0.5),
            "total_s_p95": _pct([r["total_s"] for r in rows], 0.95),
            "by_size": per_size,
            "keystroke": keystroke[name],
            "typing": typing.get(name),
        }
        engine.close()
    report["ratios"] = ratios(report, sizes)
    return report


def ratios(report: dict, sizes: list[int]) -> dict:
    """ghostls against each peer (ghostls / peer), and a warm keystroke's first token against a cold one's."""
    engines = report["engines"]
    mine = engines.get("ghostls")
    if not mine:
        return {}
    out = {}
    mid = 1000 if 1000 in sizes else sizes[len(sizes) // 2]
    for peer in ("llamacpp", "transformers"):
        if peer not in engines:
            continue
        theirs = engines[peer]
        out[f"total_p50_vs_{peer}"] = _ratio(mine["total_s_p50"], theirs["total_s_p50"])
        out[f"decode_tps_at_{mid}_vs_{peer}"] = _ratio(mine["by_size"][mid]["decode_tps_p50"],
                                                       theirs["by_size"][mid]["decode_tps_p50"])
        if mine.get("typing") and theirs.get("typing"):
            out[f"typing_vs_{peer}"] = _ratio(mine["typing"]["last_keystroke_to_completion_s"],
                                              theirs["typing"]["last_keystroke_to_completion_s"])
    ks = mine["keystroke"]
    if ks.get("cold_ttft_s") and ks.get("char_ttft_s"):
        out["keystroke_char_ttft_vs_cold"] = _ratio(ks["char_ttft_s"], ks["cold_ttft_s"])
        out["keystroke_line_ttft_vs_cold"] = _ratio(ks["line_ttft_s"], ks["cold_ttft_s"])
    return out


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def render_table(report: dict) -> str:
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    sizes = report["settings"]["sizes"]
    lines = [f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
             f"{report['settings']['threads']} threads; {report['settings']['new_tokens']} new tokens; "
             f"prompts from {', '.join(report['settings']['files'])}", ""]
    lines.append("| engine | prompt tokens | TTFT p50 s | decode tok/s | total p50 s | total p95 s | agree (of new) |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, e in report["engines"].items():
        for size in sizes:
            s = e["by_size"].get(size) or e["by_size"][str(size)]  # str keys once read back from JSON
            lines.append(f"| {name} | {size} | {f(s['ttft_s_p50'])} | {f(s['decode_tps_p50'], 1)} | "
                         f"{f(s['total_s_p50'])} | {f(s['total_s_p95'])} | "
                         f"{f(s['agree_mean'], 1)} / {f(s['new_tokens_mean'], 1)} |")
    lines += ["", "| engine | load s | model MiB | peak RSS MiB | keystroke TTFT: cold / +char / +line s | "
                  "typing: last key to completion s (cancelled) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, e in report["engines"].items():
        k, t = e["keystroke"], e["typing"] or {}
        lines.append(f"| {name} | {f(e['load_s'])} | {e['model_bytes'] / 2**20:.0f} | "
                     f"{e['peak_rss_bytes'] / 2**20:.0f} | {f(k.get('cold_ttft_s'))} / {f(k.get('char_ttft_s'), 3)} "
                     f"/ {f(k.get('line_ttft_s'), 3)} | {f(t.get('last_keystroke_to_completion_s'))} "
                     f"({t.get('cancelled', '-')}) |")
    if report["ratios"]:
        lines += ["", "ratios (ghostls / peer; keystroke: warm / cold): " +
                  ", ".join(f"{k} {v}" for k, v in report["ratios"].items())]
    for name, why in report["unavailable"].items():
        lines.append(f"{name}: not run ({why})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: " + ", ".join(ENGINES))
    parser.add_argument("--sizes", default="300,1000,2000", help="prompt sizes in tokens")
    parser.add_argument("--prompts", type=int, default=3, help="files per prompt size")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--keystrokes", type=int, default=10)
    parser.add_argument("--interval-ms", type=int, default=80)
    parser.add_argument("--threads", type=int, default=0, help="per engine; default: this process's cores")
    parser.add_argument("--model", help="ghostls's converted model folder (default: the embedded model)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--smoke", action="store_true", help="a short run that shows every part works (CI)")


def run_from_args(args) -> int:
    if args.smoke:
        args.sizes, args.prompts, args.new_tokens, args.keystrokes = "64,160", 1, 6, 3
    report = run_bench(args)
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0 if report["engines"] else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.threads or len(os.sched_getaffinity(0)), args.model)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
