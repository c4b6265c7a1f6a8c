"""Starts llama-cpp-python's OpenAI-compatible server on 127.0.0.1: the real engine of the remote-backend tests
and of bench/remote_load.py.

`python -m llama_cpp.server` cannot turn off llama.cpp's extra buffer types (weight repacking), and
llama.cpp has crashed in that (AMX) CPU path on machines of this project's kind; so this launcher builds
the same app with `use_extra_bufts` off in every model's params. (On the machine these tests were written
on, the plain server did not crash with the embedded Q4_1 model.) It also
keeps concurrent streams whole (see `interrupt_requests` below). It binds loopback only.

    python -m ghostls.cli.llama_server --model FILE.gguf --port 8080 [--n-ctx 2048] [--n-threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .bench import without_llama_cpp_extra_buffers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--alias", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)

    without_llama_cpp_extra_buffers()
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(model=args.model, model_alias=args.alias, n_ctx=args.n_ctx, n_threads=args.n_threads,
                          n_threads_batch=args.n_threads, verbose=False)
    # interrupt_requests off: by default a new request makes the streaming one end early with [DONE], which a
    # client cannot tell from a finished answer; with several editors on one engine, each must get its own.
    server = ServerSettings(host="127.0.0.1", port=args.port, interrupt_requests=False)
    app = create_app(server_settings=server, model_settings=[model])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_llama_server(model: Path, port: int | None = None, n_ctx: int = 2048, n_threads: int = 1,
                         wait_s: float = 120.0):
    """A llama.cpp server subprocess; yields its base URL (`http://127.0.0.1:PORT`) once it has answered a
    first (warm-up) completion. One thread by default: on a shared 2-core machine llama.cpp's spinning
    threads wait on each other, and the first request took 5 s with two threads against 1.2 s with one."""
    port = port or free_port()
    log = tempfile.TemporaryFile()  # not a pipe: a server that logs more than a pipe holds would block on it
    process = subprocess.Popen([sys.executable, "-m", "ghostls.cli.llama_server", "--model", str(model),
                                "--port", str(port), "--n-ctx", str(n_ctx), "--n-threads", str(n_threads)],
                               stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama.cpp server exited with {process.returncode}: "
                                   f"{log.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not answer within {wait_s:.0f}s")
            time.sleep(0.2)
        warm_up = json.dumps({"prompt": "def", "max_tokens": 1, "temperature": 0}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{url}/v1/completions", warm_up,
                                                      {"Content-Type": "application/json"}), timeout=wait_s).read()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


if __name__ == "__main__":
    main()
