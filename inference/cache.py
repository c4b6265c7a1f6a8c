"""The on-disk cache of converted ONNX models: where it lives, the manifest each model carries, and the check
that a model folder holds only safe formats before anything reads it.

Never imports onnx, torch or transformers: the server calls this on its start path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import platformdirs

MANIFEST_NAME = "ghostls-manifest.json"
MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"

# Files that run code when loaded: a pickle executes on unpickling, a shared library on dlopen.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LIBRARY_SUFFIXES = (".so", ".dll", ".dylib")


class ModelError(Exception):
    """A model is missing, unsafe, corrupt or failed to convert; the message is shown to the user as is."""


def models_root() -> Path:
    """`$GHOSTLS_CACHE_DIR/models` if set, else the per-user cache folder."""
    base = os.environ.get("GHOSTLS_CACHE_DIR")
    root = Path(base) if base else Path(platformdirs.user_cache_dir("ghostls"))
    return root / "models"


@dataclass(frozen=True)
class ModelManifest:
    """What a converted model is and how it was made; written last, so its presence marks a complete model."""

    name: str
    source: str
    source_sha256: str
    precision: str
    execution_provider: str
    architecture: str
    fim_family: str
    fim_tokens: dict[str, str] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    converter_versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # Size in bytes of every file of the model, and the sha256 of the graph file.
    file_sizes: dict[str, int] = field(default_factory=dict)
    model_sha256: str = ""
    # (relative path, size, mtime_ns) of the source files: lets a cache hit skip re-hashing a large source.
    source_fingerprint: list[list] = field(default_factory=list)
    # The conversion recipe (builder options) it was made with; manifests from before recipes read as 1.
    recipe: int = 1
    # Precisions "native" and "w8a8": how many MatMul weights were kept exactly ("q4_1 exact", "q8_0 exact") or
    # quantized ("int8 absmax", "w8a8"); empty for the builder's precisions.
    weights: dict[str, int] = field(default_factory=dict)
    # "int8" or "float16": attention is ghostls's own op over that cache (inference/converter/ops/), its library
    # copied into the folder; "float32": onnxruntime's GroupQueryAttention, as for a manifest without this field.
    kv_cache: str = "float32"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class InstalledModel:
    path: Path
    manifest: ModelManifest


def read_manifest(model_dir: Path) -> ModelManifest:
    path = Path(model_dir) / MANIFEST_NAME
    try:
        return ModelManifest.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{model_dir} is not a ghostls model (no {MANIFEST_NAME}); convert it with "
            "`ghostls model convert SOURCE`"
        ) from None
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"the manifest of {model_dir} is unreadable ({e}); convert the model again with --force") from None


def list_models(root: Path | None = None) -> list[InstalledModel]:
    """Every converted model under the cache root, by name; folders without a readable manifest are skipped."""
    root = Path(root) if root is not None else models_root()
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        try:
            found.append(InstalledModel(d, read_manifest(d)))
        except ModelError:
            continue
    return found


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _looks_like_protobuf(path: Path) -> bool:
    # An ONNX ModelProto opens with a field tag: field 1 (ir_version) as a varint is 0x08. Accept any tag of a
    # low field number with a varint or length-delimited wire type; text, HTML or zeros fail this.
    with open(path, "rb") as f:
        head = f.read(1)
    if not head:
        return False
    field_number, wire_type = head[0] >> 3, head[0] & 7
    return 1 <= field_number <= 20 and wire_type in (0, 2)


def unsafe_files(model_dir: Path) -> list[Path]:
    """Pickles and native libraries anywhere under the folder, but for a byte-identical copy of the ops library
    ghostls built from its own source (inference/converter/ops/library.py) at the folder's top."""
    from ghostls.inference.converter.ops import library

    own = Path(model_dir) / library.LIBRARY_NAME
    return sorted(
        p for p in Path(model_dir).rglob("*")
        if p.is_file() and p.name.lower().endswith(PICKLE_SUFFIXES + LIBRARY_SUFFIXES)
        and not (p == own and library.is_own_library(p))
    )


def _custom_ops_libraries(config) -> set[str]:
    """Every value of a custom_ops_library key, at any depth of genai_config.json."""
    if isinstance(config, dict):
        found = {str(v) for k, v in config.items() if k == "custom_ops_library"}
        return found.union(*(_custom_ops_libraries(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(_custom_ops_libraries(v) for v in config))
    return set()


def validate_model_dir(model_dir: Path, *, check_hash: bool = True) -> ModelManifest:
    """Check a converted model before any runtime reads it; returns its manifest or raises ModelError.

    Only ONNX, JSON and tokenizer files may be present: no pickles, no custom-op libraries but a byte-identical
    copy of ghostls's own attention ops. The graph file must look like protobuf and match the sha256 the manifest
    recorded; every recorded file must have its size.
    """
    from ghostls.inference.converter.ops import library

    own_library = library.LIBRARY_NAME
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist")
    bad = unsafe_files(model_dir)
    if bad == [model_dir / own_library]:
        raise ModelError(f"refusing to load {model_dir}: it holds a file that can run code when loaded "
                         f"({own_library}, not the ops this ghostls built: made by another "
                         "version?); convert the model again with --force")
    if bad:
        names = ", ".join(str(p.relative_to(model_dir)) for p in bad)
        raise ModelError(
            f"refusing to load {model_dir}: it holds files that can run code when loaded ({names}); "
            "ghostls only reads ONNX, JSON and tokenizer files"
        )
    manifest = read_manifest(model_dir)

    config_path = model_dir / GENAI_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        graph_name = config["model"]["decoder"]["filename"]
    except FileNotFoundError:
        raise ModelError(f"{model_dir} has no {GENAI_CONFIG}; convert the model again with --force") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{config_path} is unreadable ({e}); convert the model again with --force") from None
    if graph_name != MODEL_FILE:
        raise ModelError(f"{config_path} names an unexpected model file {graph_name!r}")
    libraries = _custom_ops_libraries(config)
    if own_library in libraries and not (model_dir / own_library).is_file():
        # onnxruntime would look the bare name up on the system's library path instead.
        raise ModelError(f"{model_dir} names {own_library} but does not hold it; "
                         "convert the model again with --force")
    if libraries - {own_library}:
        # ONNX Runtime GenAI would dlopen it: native code chosen by whoever wrote the model folder. The one name
        # allowed is the attention op's copy, which unsafe_files above has checked is ghostls's own build.
        raise ModelError(f"refusing to load {model_dir}: {GENAI_CONFIG} names a custom_ops_library; "
                         "ghostls never loads native code from a model's configuration")

    graph = model_dir / MODEL_FILE
    if not graph.is_file() or graph.stat().st_size == 0 or not _looks_like_protobuf(graph):
        raise ModelError(f"{graph} is missing, empty or not an ONNX file; convert the model again with --force")
    for name, size in manifest.file_sizes.items():
        path = model_dir / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            state = "missing" if actual is None else f"{actual} bytes, expected {size}"
            raise ModelError(f"{path} is truncated or changed ({state}); convert the model again with --force")
    if check_hash and manifest.model_sha256 and sha256_file(graph) != manifest.model_sha256:
        raise ModelError(f"{graph} does not match its manifest (sha256 differs); convert the model again with --force")
    return manifest
