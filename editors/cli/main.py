"""The `ghostls` command: serve, complete, model, completions.

`complete` drives the real server over LSP (stdio), exactly as an editor does, so every run of it
exercises the protocol path too. Exit codes: 0 a completion, 1 none, 2 an error.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from ghostls import __version__

EXIT_COMPLETION, EXIT_NONE, EXIT_ERROR = 0, 1, 2
# `serve --tcp`: the shared secret a client must present; required to listen beyond loopback.
TOKEN_ENV = "GHOSTLS_TCP_TOKEN"
MIN_TOKEN_LENGTH = 16


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ghostls", description="AI ghost-text completions over LSP, locally.")
    parser.add_argument("--version", action="version", version=f"ghostls {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the language server")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    mode.add_argument("--tcp", type=int, metavar="PORT", help="listen for one LSP client on a TCP port (debugging)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="TCP address (default 127.0.0.1); any other than loopback needs a token")
    serve.add_argument("--token-file", type=Path, metavar="FILE",
                       help="TCP only: clients must send this file's token as initializationOptions.ghostlsToken "
                            f"in `initialize` (or set ${TOKEN_ENV}); required for a non-loopback --host")
    serve.add_argument("--model", help="model folder, Hugging Face checkpoint or .gguf (default: embedded)")
    serve.add_argument("--log-level", default="info", choices=["error", "warning", "info", "debug"],
                       help="what the server logs to stderr")
    serve.set_defaults(func=_serve)

    complete = sub.add_parser("complete", help="complete one position of a file and print the ghost text")
    complete.add_argument("target", help="FILE:LINE:COL (1-based; COL counts characters), or FILE with --line/--col; "
                                         "FILE `-` reads stdin (then --language is needed)")
    complete.add_argument("--line", type=int, help="1-based line")
    complete.add_argument("--col", type=int, help="1-based column in characters")
    complete.add_argument("--language", help="LSP language id (default: from the file extension)")
    complete.add_argument("--model", help="model folder, Hugging Face checkpoint or .gguf (default: embedded)")
    complete.add_argument("--max-lines", type=int, help="at most this many lines of completion")
    complete.add_argument("--json", action="store_true", help="print text, range, reason and timings as JSON")
    complete.add_argument("--timeout", type=float, default=900.0,
                          help="seconds to wait, including a first-use model conversion")
    complete.set_defaults(func=_complete)

    completions = sub.add_parser("completions", help="print a shell completion script (bash, zsh or fish)")
    completions.add_argument("shell", choices=["bash", "zsh", "fish"])
    completions.set_defaults(func=_completions)
    evaluate = sub.add_parser("eval", help="cut holes in repositories and score the server's completions")
    evaluate.add_argument("repository", nargs="+",
                          help="folders of the repositories to evaluate on (read, never written)")
    evaluate.add_argument("--limit", type=int, default=40, help="number of holes per repository (default 40)")
    evaluate.add_argument("--seed", type=int, default=1)
    evaluate.add_argument("--model", help="model folder, Hugging Face checkpoint or .gguf (default: embedded)")
    evaluate.add_argument("--ablation", action="store_true",
                          help="also run without each post-processing rule and without cross-file context")
    evaluate.add_argument("--no-naive", action="store_true", help="skip the naive peer")
    evaluate.add_argument("--time-budget-ms", type=int, default=30_000,
                          help="per-completion time budget, for both (default 30000: quality, not the machine's load)")
    evaluate.add_argument("--max-prompt-tokens", type=int,
                          help="prompt budget for the server and the naive peer (default: the server's, 1024 on a CPU)")
    evaluate.add_argument("--settings", type=_json_object, default={}, metavar="JSON",
                          help='server settings for every configuration, e.g. \'{"contextTokens": 512}\'')
    evaluate.add_argument("--json", metavar="FILE", help="write every hole's scores here")
    evaluate.set_defaults(func=_eval)

    model = sub.add_parser("model", help="convert, list and inspect models")
    model_sub = model.add_subparsers(metavar="ACTION")
    convert = model_sub.add_parser("convert", help="convert a Hugging Face folder or a .gguf file to ONNX")
    convert.add_argument("source", nargs="?", help="checkpoint folder or .gguf file (default: the embedded model)")
    convert.add_argument("--precision", default="auto", choices=["auto", "int8", "w8a8", "native", "int4", "fp16",
                                                                  "fp32"],
                         help="weight precision of the ONNX model (native: a GGUF file's own 4/8-bit blocks, "
                              "kept exactly; w8a8: native with the projections after a norm or attention as "
                              "int8 against int8 activations, CPU only; auto: w8a8 for a .gguf on the CPU, "
                              "native on CUDA, int8 for a checkpoint)")
    convert.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="execution provider it is built for")
    convert.add_argument("--kv-cache", default="auto", choices=["auto", "int8", "float16", "float32"],
                         help="KV cache type on the CPU: int8 and float16 run ghostls's own attention op (built "
                              "on first use with g++); auto: int8 for a .gguf, float16 for a checkpoint, float32 "
                              "where the op cannot run")
    convert.add_argument("--force", action="store_true", help="convert again even if the cache has it")
    convert.set_defaults(func=_model_convert)
    listing = model_sub.add_parser("list", help="list converted models")
    listing.set_defaults(func=_model_list)
    info = model_sub.add_parser("info", help="show a converted model's manifest")
    info.add_argument("model", help="model name (from `model list`) or folder")
    info.set_defaults(func=_model_info)

    bench = sub.add_parser("bench", help="measure ghostls's engine beside llama.cpp and transformers")
    from ghostls.cli import bench as bench_engines

    bench_engines.add_arguments(bench)
    bench.set_defaults(func=bench_engines.run_from_args)
    return parser


# -- serve ---------------------------------------------------------------------------------------
def _serve(args) -> int:
    # stdout carries the protocol: logs go to stderr only.
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # pygls logs every message it sends (completions: the user's code) and the initialize params at
        # INFO; source code reaches the log at debug level only.
        logging.getLogger("pygls").setLevel(logging.WARNING)
    from ghostls.server.app import create_server

    server = create_server()
    if args.model:
        server.settings = _with_model(server.settings, args.model)
    from ghostls.server import wire

    if args.tcp is not None:
        try:
            token = _tcp_token(args.token_file)
        except OSError as exc:
            print(f"ghostls: cannot read the token file: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if not _is_loopback(args.host) and token is None:
            print(f"ghostls: refusing to listen on {args.host} without a token: only loopback addresses "
                  f"(127.0.0.1, ::1) go without one; set ${TOKEN_ENV} or pass --token-file", file=sys.stderr)
            return EXIT_ERROR
        code = wire.serve_tcp(server, args.host, args.tcp, token)
    else:
        code = wire.serve_stdio(server)
    _leave(code)


def _leave(code: int) -> NoReturn:
    """Ends the server process without Python's finalization. When `exit` comes while the model is still
    loading, its thread is inside onnxruntime, and finalizing the interpreter around native code in flight can
    wait forever on a lock that code holds (`ghostls complete` on a secrets file, which says `exit` right after
    `initialized`, hung once in a test run). Every answer is written by now: logs and streams are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the client already closed the pipe
            pass
    os._exit(code)


def _tcp_token(token_file: Path | None) -> str | None:
    """The TCP token from --token-file or $GHOSTLS_TCP_TOKEN; a short one is refused as guessable."""
    token = token_file.read_text().strip() if token_file else os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise OSError(f"the token must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def _with_model(settings, model: str):
    import dataclasses

    return dataclasses.replace(settings, model=str(Path(model).expanduser().resolve()))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- complete ------------------------------------------------------------------------------------
class CliError(Exception):
    pass


def _complete(args) -> int:
    try:
        path, line, col = _parse_target(args.target, args.line, args.col)
        if str(path) == "-" and not args.language:
            raise CliError("reading stdin needs --language (an LSP language id such as python or typescript)")
        text = _read_source(path)
        _check_position(text, line, col, path)
        result = asyncio.run(asyncio.wait_for(_ask_server(args, path, text, line - 1, col - 1), args.timeout))
    except CliError as exc:
        print(f"ghostls: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except asyncio.TimeoutError:
        print(f"ghostls: no answer within {args.timeout:.0f}s", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["text"]:
        sys.stdout.write(result["text"] + ("" if result["text"].endswith("\n") else "\n"))
    else:
        print(f"ghostls: no completion ({result.get('reason') or 'empty'})", file=sys.stderr)
    return EXIT_COMPLETION if result["text"] else EXIT_NONE


def _parse_target(target: str, line: int | None, col: int | None) -> tuple[Path, int, int]:
    if line is None and col is None:
        parts = target.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise CliError(f"expected FILE:LINE:COL (or FILE with --line and --col), got {target!r}")
        target, line, col = parts[0], int(parts[1]), int(parts[2])
    if line is None or col is None:
        raise CliError("--line and --col go together")
    if line < 1 or col < 1:
        raise CliError("LINE and COL are 1-based: both must be at least 1")
    return Path(target), line, col


def _read_source(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise CliError(f"{path} looks like a binary file")
    return data.decode("utf-8", errors="replace")


def _check_position(text: str, line: int, col: int, path: Path) -> None:
    lines = text.split("\n")
    if line > len(lines):
        raise CliError(f"{path} has {len(lines)} lines; line {line} is outside it")
    width = len(lines[line - 1].rstrip("\r"))
    if col > width + 1:
        raise CliError(f"line {line} of {path} has {width} characters; column {col} is outside it")


async def _ask_server(args, path: Path, text: str, line: int, character: int) -> dict:
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    from ghostls.parsers.languages import rules_for

    uri = "untitled:stdin" if str(path) == "-" else path.resolve().as_uri()
    rules = rules_for(None, uri)
    language = args.language or (rules.language_ids[0] if rules.language_ids else rules.name)
    client = LanguageClient("ghostls-cli", __version__)
    bar = ProgressBar()
    status: dict = {}

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def _create(params):
        return None

    @client.feature(types.PROGRESS)
    def _progress(params):
        bar.update(params.value)

    @client.feature("ghostls/status")
    def _status(params):
        status.update({k: getattr(params, k, None) for k in ("state", "detail", "provider", "model")})

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def _show(params):
        print(params.message, file=sys.stderr)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def _log(params):
        pass  # the server's own log goes to its stderr

    command = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio", "--log-level", "warning"]
    if args.model:
        command += ["--model", args.model]
    await client.start_io(*command)
    options = {"loadWaitMs": int(args.timeout * 1000)}
    if args.max_lines:
        options["maxLines"] = args.max_lines
    try:
        await client.initialize_async(types.InitializeParams(
            process_id=os.getpid(),
            capabilities=types.ClientCapabilities(
                general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf32]),
                window=types.WindowClientCapabilities(work_done_progress=True)),
            initialization_options=options))
        client.initialized(types.InitializedParams())
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))
        answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character)))
        explanation = await client.protocol.send_request_async("ghostls/explain", None)
        await client.shutdown_async(None)
        client.exit(None)
    finally:
        bar.close()
        await _stop(client)
    items = answer.items if answer is not None else []
    last = getattr(explanation, "last", None)
    # The range the text replaces (empty: inserted at the cursor), 1-based like the command's own input;
    # columns count characters (the client asked for utf-32 positions).
    at = items[0].range if items and items[0].range else types.Range(types.Position(line, character),
                                                                        types.Position(line, character))
    return {
        "text": items[0].insert_text if items else "",
        # An invoked request's other candidates (the ones an editor cycles through).
        "alternatives": [item.insert_text for item in items[1:]],
        "range": {"start": {"line": at.start.line + 1, "col": at.start.character + 1},
                  "end": {"line": at.end.line + 1, "col": at.end.character + 1}},
        "reason": getattr(last, "reason", None) or status.get("detail"),
        "timings_ms": _plain(getattr(last, "timings_ms", None)),
        "prompt_tokens": getattr(last, "prompt_tokens", None),
        "provider": status.get("provider"),
        "model": status.get("model"),
    }


async def _stop(client, grace_s: float = 30.0) -> None:
    """pygls's `stop` waits for the server process without a limit: one still there `grace_s` after `exit` is
    killed, so that a stuck server never leaves `ghostls complete` hanging once it has its answer."""
    try:
        await asyncio.wait_for(client.stop(), grace_s)
    except asyncio.TimeoutError:
        print(f"ghostls: the server did not exit within {grace_s:.0f}s of `exit`; stopped it", file=sys.stderr)
        client._server.kill()


def _plain(value):
    """pygls hands custom results back as namespaces; turn one back into a dict."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    return value


class ProgressBar:
    """A one-line progress bar on stderr for the first-use conversion."""

    def __init__(self) -> None:
        self._shown = False

    def update(self, value) -> None:
        # $/progress values arrive as plain dicts (LSPAny), as do the converter's own reports.
        percentage = value.get("percentage")
        message = value.get("message") or value.get("title") or ""
        if percentage is None:
            return
        filled = int(percentage / 5)
        line = f"ghostls: [{'#' * filled}{'.' * (20 - filled)}] {percentage:3d}% {message}"
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line.ljust(78))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown and sys.stderr.isatty():
            sys.stderr.write("\n")


# -- completions ---------------------------------------------------------------------------------
def _completions(args) -> int:
    from ghostls.cli.shells import script

    sys.stdout.write(script(args.shell, build_parser()))
    return 0


# -- model ---------------------------------------------------------------------------------------
def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"contextTokens\": 512}'")
    return value


def _eval(args) -> int:
    from .evaluate import run

    return run(args)


def _model_convert(args) -> int:
    from ghostls.inference import embedded
    from ghostls.inference.converter import convert
    from ghostls.inference.cache import ModelError

    bar = ProgressBar()

    def progress(stage: str, fraction: float) -> None:
        bar.update({"percentage": int(fraction * 100), "message": stage})

    try:
        source = Path(args.source) if args.source else embedded.embedded_gguf_path()
        out = convert.convert(source, precision=args.precision, execution_provider=args.provider,
                              force=args.force, progress=progress, kv_cache=args.kv_cache)
    except ModelError as exc:
        bar.close()
        print(f"ghostls: {exc}", file=sys.stderr)
        return EXIT_ERROR
    bar.close()
    print(out)
    return 0


def _model_list(args) -> int:
    from ghostls.inference.cache import list_models

    models = list_models()
    if not models:
        print("no converted models yet: `ghostls model convert` converts the embedded one", file=sys.stderr)
        return EXIT_NONE
    for model in models:
        manifest = model.manifest
        print(f"{model.path.name}\t{manifest.precision}\t{manifest.fim_family}\t{model.path}")
    return 0


def _model_info(args) -> int:
    from ghostls.inference.cache import ModelError, models_root, read_manifest

    folder = Path(args.model)
    if not folder.is_dir():
        folder = models_root() / args.model
    try:
        manifest = read_manifest(folder)
    except ModelError as exc:
        print(f"ghostls: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(manifest.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
