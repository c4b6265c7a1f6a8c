"""Fill-in-the-middle prompt templates, one per model family, and their detection from a tokenizer.

Pure data and string functions: this module must never import onnxruntime, torch or transformers.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

# Layouts of the prompt around the cursor.
PSM = "psm"  # prefix, suffix, middle: generation continues after the middle token
SPM = "spm"  # suffix first, then prefix: generation continues the prefix
PREFIX_ONLY = "prefix_only"  # no FIM training: plain continuation of the prefix

# End-of-text tokens of common models: a prefix-only model stops on whichever of these its vocab holds.
_EOS_LIKE = ("<|endoftext|>", "<|im_end|>", "</s>", "<|EOT|>", "<eos>", "<|end_of_text|>", "<|eot_id|>")
# File separators: a code model that emits one has finished the file we asked about.
_FILE_SEPARATORS = ("<file_sep>", "<|file_sep|>", "<|file_separator|>")


@dataclass(frozen=True)
class FimTemplate:
    """How one model family wants the code around the cursor laid out, and which strings end its answer."""

    family: str
    prefix: str = ""
    suffix: str = ""
    middle: str = ""
    order: str = PSM
    stop: tuple[str, ...] = ()
    # Code Llama was trained with a space after <PRE> and before <SUF> and <MID>.
    padded: bool = False

    @property
    def uses_suffix(self) -> bool:
        return self.order != PREFIX_ONLY

    @property
    def tokens(self) -> dict[str, str]:
        """The FIM special tokens by role; empty for a prefix-only model."""
        if not self.uses_suffix:
            return {}
        return {role: tok for role, tok in (("prefix", self.prefix), ("suffix", self.suffix), ("middle", self.middle)) if tok}

    def render(self, prefix: str, suffix: str, context: str = "") -> str:
        """The prompt text; `context` (other files, imports) goes first, before the FIM prefix token."""
        if self.order == PREFIX_ONLY:
            return f"{context}{prefix}"
        pad = " " if self.padded else ""
        if self.order == SPM:
            return f"{context}{self.suffix}{suffix}{self.prefix}{pad}{prefix}{self.middle}"
        return f"{context}{self.prefix}{pad}{prefix}{pad}{self.suffix}{suffix}{pad}{self.middle}"


TEMPLATES: dict[str, FimTemplate] = {
    t.family: t
    for t in (
        FimTemplate(
            "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
            stop=("<|endoftext|>", "<file_sep>", "<fim_prefix>"),
        ),
        FimTemplate(
            "qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
            stop=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|fim_prefix|>"),
        ),
        FimTemplate(
            "deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
            stop=("<|EOT|>", "<｜end▁of▁sentence｜>"),
        ),
        FimTemplate("codellama", "<PRE>", "<SUF>", "<MID>", stop=("<EOT>", "</s>"), padded=True),
        FimTemplate("codestral", "[PREFIX]", "[SUFFIX]", "", order=SPM, stop=("</s>",)),
        FimTemplate(
            "codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
            stop=("<|file_separator|>", "<eos>", "<|fim_prefix|>"),
        ),
        FimTemplate(PREFIX_ONLY, order=PREFIX_ONLY, stop=("<|endoftext|>", "<|im_end|>", "</s>")),
    )
}


def template_by_name(name: str) -> FimTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown FIM template {name!r}; valid names: {', '.join(TEMPLATES)}") from None


def detect_template(tokens: Collection[str]) -> FimTemplate:
    """The family whose FIM tokens the tokenizer holds (special tokens, added tokens or vocab entries).

    Qwen and CodeGemma spell their FIM tokens alike; CodeGemma's `<|file_separator|>` tells them apart.
    A tokenizer with no FIM tokens gets the prefix-only template, stopping on the EOS tokens it has.
    """
    tokens = set(tokens)
    if "<｜fim▁begin｜>" in tokens:
        return TEMPLATES["deepseek"]
    if "<|fim_prefix|>" in tokens:
        return TEMPLATES["codegemma" if "<|file_separator|>" in tokens else "qwen"]
    if "<fim_prefix>" in tokens:
        return TEMPLATES["starcoder"]
    if {"[PREFIX]", "[SUFFIX]"} <= tokens:
        return TEMPLATES["codestral"]
    # Code Llama's SentencePiece vocab spells them with a leading "▁".
    if {"<PRE>", "<SUF>", "<MID>"} <= tokens or {"▁<PRE>", "▁<SUF>", "▁<MID>"} <= tokens:
        return TEMPLATES["codellama"]
    stop = tuple(t for t in _EOS_LIKE + _FILE_SEPARATORS if t in tokens)
    return FimTemplate(PREFIX_ONLY, order=PREFIX_ONLY, stop=stop or TEMPLATES[PREFIX_ONLY].stop)


def tokens_of_tokenizer_json(path: Path) -> set[str]:
    """Every token a Hugging Face tokenizer.json knows: its added tokens and its vocab keys."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    tokens = {t["content"] for t in data.get("added_tokens") or ()}
    vocab = (data.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict):  # BPE, WordPiece
        tokens.update(vocab)
    else:  # Unigram: [[piece, score], ...]
        tokens.update(entry[0] for entry in vocab)
    return tokens


# Model-name fragments of FIM-trained families, most specific first (a served model has no tokenizer here).
_NAME_HINTS = (
    ("codegemma", "codegemma"),
    ("codestral", "codestral"),
    ("deepseek-coder", "deepseek"),
    ("deepseek_coder", "deepseek"),
    ("codellama", "codellama"),
    ("code-llama", "codellama"),
    ("qwen2.5-coder", "qwen"),
    ("qwen2-coder", "qwen"),
    ("qwen3-coder", "qwen"),
    ("qwen-coder", "qwen"),
    ("starcoder", "starcoder"),
    ("santacoder", "starcoder"),
    ("stable-code", "starcoder"),
)


def template_for_model_name(model: str) -> FimTemplate:
    """The FIM family a served model's name suggests (`Qwen/Qwen2.5-Coder-1.5B` -> qwen); prefix-only when
    the name says nothing, because a FIM template sent to a model not trained on it yields garbage."""
    name = model.lower().rsplit("/", 1)[-1]
    for hint, family in _NAME_HINTS:
        if hint in name:
            return TEMPLATES[family]
    return TEMPLATES[PREFIX_ONLY]
