"""libghostls_ops, the one shared library all of ghostls's onnxruntime ops are compiled into: building it from the
sources and flags that build.toml lists, into the cache; copying it into a model folder; telling that copy apart
from any other native code.

Never loads native code it did not build from that source itself: a model folder may carry the library only as a
byte-identical copy of the one built here (cache.validate_model_dir checks it with `is_own_library`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ghostls.inference.cache import ModelError, models_root, sha256_file

SOURCE_DIR = Path(__file__).parent
DESCRIPTION = SOURCE_DIR / "build.toml"
LIBRARY_NAME = "libghostls_ops.so"  # the copy's name inside a model folder


@dataclass(frozen=True)
class BuildDescription:
    """build.toml, read."""

    sources: tuple[str, ...]
    headers: tuple[str, ...]
    compilers: tuple[str, ...]
    flags: tuple[str, ...]
    system: str
    machines: tuple[str, ...]
    cpu_features: tuple[str, ...]
    onnxruntime_version: str
    headers_deb: str
    headers_sha256: str


@functools.cache
def description() -> BuildDescription:
    """build.toml's contents (read once)."""
    data = tomllib.loads(DESCRIPTION.read_text(encoding="utf-8"))
    library, compiler, target, ort = data["library"], data["compiler"], data["target"], data["onnxruntime"]
    return BuildDescription(
        sources=tuple(library["sources"]), headers=tuple(library["headers"]), compilers=tuple(compiler["commands"]),
        flags=tuple(compiler["flags"]), system=target["system"], machines=tuple(target["machines"]),
        cpu_features=tuple(target["cpu_features"]), onnxruntime_version=ort["version"],
        headers_deb=ort["headers_deb"], headers_sha256=ort["headers_sha256"])


def native_root() -> Path:
    """Where built libraries and the downloaded headers live: beside the converted models."""
    return models_root().parent / "native"


def library_path() -> Path:
    """The library for this build description and these sources; a change to any builds (and converts) anew."""
    spec = description()
    digest = hashlib.sha256(DESCRIPTION.read_bytes())
    for name in sorted(spec.sources + spec.headers):
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    key = digest.hexdigest()[:16]
    return native_root() / f"{Path(LIBRARY_NAME).stem}-{key}.so"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the ops, or None when it can."""
    spec = description()
    if platform.system() != spec.system or platform.machine() not in spec.machines:
        return (f"the KV cache attention ops are built for {spec.system} {spec.machines[0]}, not "
                f"{platform.system()} {platform.machine()}")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "cannot read the CPU's features from /proc/cpuinfo"
    missing = [f for f in spec.cpu_features if f not in flags.split()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    try:
        import onnxruntime  # any of its distributions: onnxruntime, onnxruntime-gpu
    except ImportError:
        return "onnxruntime is not installed"
    version = onnxruntime.__version__
    if _version(version) < _version(spec.onnxruntime_version):
        return f"onnxruntime {version} is older than the {spec.onnxruntime_version} the op is built for"
    return None


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def build() -> Path:
    """The library, compiled now if this source has not been built yet (a few seconds; the headers are fetched
    once). Raises ModelError saying why when it cannot be built."""
    target = library_path()
    if target.is_file():
        return target
    reason = unavailable_reason()
    if reason:
        raise ModelError(reason)
    import subprocess

    spec = description()
    compiler = os.environ.get("CXX") or next(filter(None, map(shutil.which, spec.compilers)), None)
    if not compiler:
        raise ModelError(f"no C++ compiler ({spec.compilers[0]}) to build the KV cache attention ops")
    include = _headers()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    cmd = [compiler, *spec.flags, f"-I{include}", *(str(SOURCE_DIR / name) for name in spec.sources), "-o",
           str(partial)]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ModelError(f"building the KV cache attention ops failed:\n{done.stderr[-2000:]}")
    partial.replace(target)  # whole or absent, even with two conversions racing
    return target


def _headers() -> Path:
    """onnxruntime's include folder: $GHOSTLS_ORT_INCLUDE, or Debian's headers unpacked into the cache."""
    import io
    import tarfile
    import tempfile
    import urllib.request

    if os.environ.get("GHOSTLS_ORT_INCLUDE"):
        return Path(os.environ["GHOSTLS_ORT_INCLUDE"])
    spec = description()
    include = native_root() / f"onnxruntime-{spec.onnxruntime_version}-include"
    if (include / "onnxruntime_cxx_api.h").is_file():
        return include
    try:
        with urllib.request.urlopen(spec.headers_deb, timeout=60) as response:
            deb = response.read()
    except OSError as e:
        raise ModelError(f"cannot fetch onnxruntime's C API headers ({e}); set GHOSTLS_ORT_INCLUDE to a folder "
                         "holding onnxruntime_cxx_api.h to build without the network") from None
    if hashlib.sha256(deb).hexdigest() != spec.headers_sha256:
        raise ModelError(f"{spec.headers_deb} does not have the expected sha256; not using it")
    native_root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".headers-", dir=native_root()))
    try:
        with tarfile.open(fileobj=io.BytesIO(_ar_member(deb, b"data.tar"))) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("./usr/include/onnxruntime/"):
                    target = staging / member.name.removeprefix("./usr/include/onnxruntime/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        try:
            staging.replace(include)
        except OSError:  # another conversion unpacked them first
            if not (include / "onnxruntime_cxx_api.h").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return include


def _ar_member(archive: bytes, prefix: bytes) -> bytes:
    """The first member of an ar archive (a .deb) whose name starts with `prefix`."""
    if not archive.startswith(b"!<arch>\n"):
        raise ModelError("the onnxruntime headers package is not a Debian archive")
    at = 8
    while at + 60 <= len(archive):
        name, size = archive[at:at + 16].strip(), int(archive[at + 48:at + 58])
        if name.startswith(prefix):
            return archive[at + 60:at + 60 + size]
        at += 60 + size + (size & 1)
    raise ModelError(f"the onnxruntime headers package has no {prefix.decode()} member")


def is_own_library(path: Path) -> bool:
    """Whether `path` holds exactly the library ghostls built from its own source."""
    try:
        own = library_path()
        return own.is_file() and path.is_file() and sha256_file(own) == sha256_file(path)
    except OSError:  # the source is not installed beside this module: nothing counts as its build
        return False


def install(model_dir: Path, library: Path) -> str:
    """Put the library's copy into the model folder; returns the name genai_config.json's custom_ops_library must
    give it (onnxruntime-genai loads custom ops only from inside the model folder)."""
    shutil.copy2(library, model_dir / LIBRARY_NAME)
    return LIBRARY_NAME


def kernel_runs(library: Path) -> dict[str, int]:
    """How many op calls in this process ran each kernel that the CPU's features choose between:
    "Int8MatMul.avx512vnni", "Int8MatMul.avx2", "Int8KvAttention.avx512vnni" and "Int8KvAttention.avx2" (a decode
    step's integer scores over the int8 cache). The counts are the library's own, shared by every session that
    registered the library at this path; the tests read them to check which kernel they ran."""
    runs = _counted(str(library))
    counts = {}
    index = 0
    while (name := runs.GhostlsKernelName(index)) is not None:
        counts[name.decode()] = runs.GhostlsKernelRuns(index)
        index += 1
    return counts


@functools.cache
def _counted(library: str):
    """The library, loaded once and kept: its counters live as long as it stays loaded."""
    import ctypes

    lib = ctypes.CDLL(library)
    lib.GhostlsKernelName.restype, lib.GhostlsKernelName.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.GhostlsKernelRuns.restype, lib.GhostlsKernelRuns.argtypes = ctypes.c_uint64, [ctypes.c_int]
    return lib


def main() -> int:
    """`python -m ghostls.inference.converter.ops.library`: build the library now (conversions build it on
    demand otherwise)."""
    import sys

    reason = unavailable_reason()
    if reason:
        print(f"ghostls: the KV cache attention ops are not built here: {reason}", file=sys.stderr)
        return 0  # not an error: conversions keep a float32 cache on such machines
    try:
        print(build())
    except ModelError as e:
        print(f"ghostls: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
