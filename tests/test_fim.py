from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from ghostls.inference.fim import TEMPLATES, detect_template, template_by_name, tokens_of_tokenizer_json
from tiny_models import FAMILIES

PREFIX = "def area(r):\n    "
SUFFIX = "\n    return a\n"
CONTEXT = "# utils.py\nimport math\n"

RENDERED = {
    "starcoder": "<fim_prefix>def area(r):\n    <fim_suffix>\n    return a\n<fim_middle>",
    "qwen": "<|fim_prefix|>def area(r):\n    <|fim_suffix|>\n    return a\n<|fim_middle|>",
    "deepseek": "<｜fim▁begin｜>def area(r):\n    <｜fim▁hole｜>\n    return a\n<｜fim▁end｜>",
    "codellama": "<PRE> def area(r):\n     <SUF>\n    return a\n <MID>",
    "codestral": "[SUFFIX]\n    return a\n[PREFIX]def area(r):\n    ",
    "codegemma": "<|fim_prefix|>def area(r):\n    <|fim_suffix|>\n    return a\n<|fim_middle|>",
    "prefix_only": "def area(r):\n    ",
}


def test_every_family_has_a_golden_rendering() -> None:
    assert set(RENDERED) == set(TEMPLATES) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_render_exact(family: str) -> None:
    template = template_by_name(family)
    assert template.render(PREFIX, SUFFIX) == RENDERED[family]
    # Context (other files, imports) always goes first, before the FIM prefix token.
    assert template.render(PREFIX, SUFFIX, CONTEXT) == CONTEXT + RENDERED[family]


def test_deepseek_tokens_use_full_width_bars() -> None:
    template = template_by_name("deepseek")
    assert template.prefix == "<\uff5cfim\u2581begin\uff5c>"
    assert "<\uff5cend\u2581of\u2581sentence\uff5c>" in template.stop


@pytest.mark.parametrize(
    ("family", "stop"),
    [
        ("starcoder", ("<|endoftext|>", "<file_sep>", "<fim_prefix>")),
        ("qwen", ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|fim_prefix|>")),
        ("deepseek", ("<|EOT|>", "<｜end▁of▁sentence｜>")),
        ("codellama", ("<EOT>", "</s>")),
        ("codestral", ("</s>",)),
        ("codegemma", ("<|file_separator|>", "<eos>", "<|fim_prefix|>")),
        ("prefix_only", ("<|endoftext|>", "<|im_end|>", "</s>")),
    ],
)
def test_stop_strings(family: str, stop: tuple[str, ...]) -> None:
    assert template_by_name(family).stop == stop


def test_uses_suffix() -> None:
    assert [f for f in FAMILIES if not template_by_name(f).uses_suffix] == ["prefix_only"]
    assert template_by_name("prefix_only").tokens == {}


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown FIM template 'santacoder'.*starcoder.*prefix_only"):
        template_by_name("santacoder")


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_from_tiny_tokenizer(family: str, tiny_checkpoints: dict[str, Path]) -> None:
    tokens = tokens_of_tokenizer_json(tiny_checkpoints[family] / "tokenizer.json")
    assert detect_template(tokens).family == family


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "prefix_only"])
def test_fim_tokens_encode_to_one_id(family: str, tiny_checkpoints: dict[str, Path]) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_checkpoints[family] / "tokenizer.json"))
    template = template_by_name(family)
    prompt_ids = tokenizer.encode(template.render(PREFIX, SUFFIX)).ids
    for token in list(template.tokens.values()) + list(template.stop):
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None, token
        assert tokenizer.encode(token).ids == [token_id], token
    for token in template.tokens.values():
        assert tokenizer.token_to_id(token) in prompt_ids, token


def test_codegemma_and_qwen_share_spelling_but_not_separators() -> None:
    shared = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"}
    assert detect_template(shared | {"<|file_separator|>", "<eos>"}).family == "codegemma"
    assert detect_template(shared | {"<|fim_pad|>", "<|file_sep|>"}).family == "qwen"
    assert detect_template(shared).family == "qwen"


def test_codellama_sentencepiece_spelling() -> None:
    assert detect_template({"▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", "</s>"}).family == "codellama"


def test_prefix_only_stops_on_the_eos_tokens_it_has() -> None:
    # SmolLM2's special tokens: no FIM tokens, chat and file-separator tokens.
    template = detect_template({"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<file_sep>", "def"})
    assert template.family == "prefix_only"
    assert template.stop == ("<|endoftext|>", "<|im_end|>", "<file_sep>")
    assert detect_template({"def", "return"}).stop == template_by_name("prefix_only").stop


def test_tokens_of_tokenizer_json_reads_unigram_vocab(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({
        "added_tokens": [{"id": 0, "content": "[PREFIX]", "special": True}],
        "model": {"type": "Unigram", "vocab": [["[SUFFIX]", 0.0], ["▁def", -1.5]]},
    }))
    assert tokens_of_tokenizer_json(path) == {"[PREFIX]", "[SUFFIX]", "▁def"}
    assert detect_template(tokens_of_tokenizer_json(path)).family == "codestral"
