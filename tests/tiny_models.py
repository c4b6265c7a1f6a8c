"""Tiny random-weight Llama checkpoints with a real byte-level BPE tokenizer, one per FIM family.

Seconds to build, so the converter and the runtime can be tested end to end without downloading a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ghostls.inference.fim import template_by_name

FAMILIES = ("starcoder", "qwen", "deepseek", "codellama", "codestral", "codegemma", "prefix_only")
VOCAB_SIZE = 1500


def _python_corpus() -> list[str]:
    """Python source of a few installed standard-library packages: code-shaped text, same on every machine."""
    import argparse
    import dataclasses
    import json as json_pkg

    files = sorted(Path(json_pkg.__file__).parent.glob("*.py"))
    files += [Path(argparse.__file__), Path(dataclasses.__file__)]
    return [f.read_text(encoding="utf-8") for f in files]


def family_special_tokens(family: str) -> list[str]:
    """The FIM tokens and stop tokens of a family; the first stop token is the model's EOS."""
    template = template_by_name(family)
    special = list(template.stop) + list(template.tokens.values())
    return list(dict.fromkeys(special))


def build_tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=family_special_tokens(family),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_python_corpus(), trainer=trainer)
    return tokenizer


def build_tiny_checkpoint(out_dir: Path, family: str) -> Path:
    """A Hugging Face folder (config.json, model.safetensors, tokenizer.json) of a 2-layer random Llama."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    eos = family_special_tokens(family)[0]
    eos_id = tokenizer.token_to_id(eos)
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
    }, indent=2, ensure_ascii=False))

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=-(-tokenizer.get_vocab_size() // 64) * 64,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir)
    return out_dir
