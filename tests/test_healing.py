"""Token healing: a prompt that ends inside a word re-chooses the word's last tokens.

Real tokenizers, a real ONNX Runtime GenAI session of a tiny prefix-only model, and the real server over LSP.
"""

from __future__ import annotations

import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from ghostls.inference.engine import HEAL_TOKENS, Engine, GenerationRequest, Vocabulary

PROMPT = "import json\n\n\ndef load(path):\n    with open(path) as handle:\n        return json.lo"


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model("prefix_only"), provider="cpu")


def _written(engine: Engine, ids) -> str:
    # Token by token: each token's own text (a random model may pick ids past the tokenizer's, which decode to "").
    return "".join(engine.tokenizer.decode([i], skip_special_tokens=False) for i in ids)


def test_agreeing_tokens_are_exactly_those_that_can_write_the_text(engine):
    vocabulary = engine.vocabulary()
    assert vocabulary.exact  # a byte-level BPE: a token's text is the same alone and in a sequence
    for text in ("re", "def", ".app", "(se", "handle"):
        agreeing = set(vocabulary.agreeing_with(text).tolist())
        expected = {i for i, token in enumerate(vocabulary.texts) if token and i not in vocabulary.special
                    and (token.startswith(text) or text.startswith(token))}
        assert agreeing == expected
        assert agreeing


def test_a_prompt_ending_inside_a_word_rewrites_its_tail_with_the_likeliest_agreeing_tokens(engine):
    ids = engine.encode(PROMPT)
    engine.reset()
    healed = engine.generate(GenerationRequest(tuple(ids), max_new_tokens=8, heal=True))
    assert healed.healed
    given_back = len(ids) - healed.prompt_tokens
    assert 1 <= given_back <= HEAL_TOKENS
    tail = _written(engine, ids[-given_back:])
    assert PROMPT.endswith(tail) and tail.strip() == tail
    written = _written(engine, healed.token_ids)
    assert written.startswith(tail)  # the new tokens write the tail again...
    assert healed.text == written[len(tail):]  # ...and the answer is only what follows it

    # The first new token is the shortened prompt's most likely token among those that agree with the tail.
    engine.reset()
    ranking = engine.generate(GenerationRequest(tuple(ids[:-given_back]), max_new_tokens=1,
                                                first_choices=len(engine.vocabulary().texts)))
    agreeing = set(engine.vocabulary().agreeing_with(tail).tolist())
    assert healed.token_ids[0] == next(t for t in ranking.first_choices if t in agreeing)

    engine.reset()
    plain = engine.generate(GenerationRequest(tuple(ids), max_new_tokens=8))
    assert not plain.healed and plain.prompt_tokens == len(ids)


@pytest.mark.parametrize("prompt", [PROMPT + "ad(handle)\n", PROMPT + "ad(handle) ", "x = 1\n\n"])
def test_a_prompt_ending_in_whitespace_is_not_healed(engine, prompt):
    ids = engine.encode(prompt)
    result = engine.generate(GenerationRequest(tuple(ids), max_new_tokens=2, heal=True))
    assert not result.healed
    assert result.prompt_tokens == len(ids)


def test_healing_stops_at_the_start_of_the_word(engine):
    # " value" starts a word: the tokens before it are never given back, whatever HEAL_TOKENS allows.
    ids = engine.encode("x = value")
    assert _written(engine, ids[-2:]) == " = value"
    result = engine.generate(GenerationRequest(tuple(ids), max_new_tokens=2, heal=True))
    assert result.prompt_tokens == len(ids) - 1


def test_an_alternative_of_a_healed_prompt_writes_the_tail_too(engine):
    ids = tuple(engine.encode(PROMPT))
    engine.reset()
    healed = engine.generate(GenerationRequest(ids, max_new_tokens=6, heal=True, first_choices=3))
    # The tail given back is what the new tokens wrote beyond the answer.
    tail = PROMPT[len(PROMPT) - (len(_written(engine, healed.token_ids)) - len(healed.text)):]
    agreeing = set(engine.vocabulary().agreeing_with(tail).tolist())
    assert healed.first_choices and set(healed.first_choices) <= agreeing
    for choice in healed.first_choices[1:]:
        branch = engine.generate(GenerationRequest(ids, max_new_tokens=6, heal=True, forced=(choice,)))
        assert branch.token_ids[0] == choice
        assert branch.reused_tokens == healed.prompt_tokens  # only the forced token was fed
        assert _written(engine, branch.token_ids).startswith(tail)
        assert branch.text == _written(engine, branch.token_ids)[len(tail):]


def test_a_tokenizer_whose_tokens_decode_differently_alone_is_never_healed():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # SentencePiece-style: "▁def" decodes to "def" alone but to " def" after another token.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(["def heal(self, x):\n    return x.strip() + ' ok'\n"] * 20,
                                  trainer=trainers.BpeTrainer(vocab_size=120, show_progress=False))
    assert not Vocabulary(tokenizer).exact


SERVER = [sys.executable, "-m", "ghostls.cli.main", "serve", "--stdio"]


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient, tiny_model):
    params = types.InitializeParams(capabilities=client_capabilities("visual-studio-code"), initialization_options={
        "model": str(tiny_model("prefix_only")), "loadWaitMs": 120_000, "debounceMs": 0, "maxNewTokens": 6,
        "timeBudgetMs": 20_000})
    await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def test_the_server_heals_a_word_being_typed_and_not_after_a_space(client: LanguageClient):
    uri = "file:///work/heal.py"
    text = PROMPT + "\nvalue = \n"
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    healed = []
    for position in (types.Position(5, 22), types.Position(6, 8)):  # after "json.lo"; after "value = "
        await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri), position=position))
        explained = await client.protocol.send_request_async("ghostls/explain", None)
        healed.append(explained.last.context.tokenHealed)
    assert healed == [True, False]


def test_the_healing_benchmark_runs(tiny_model):
    """bench/healing.py, the measurement behind HEAL_TOKENS, on a tiny model and three cursors."""
    import json as json_package
    import pathlib
    import subprocess

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "healing.py"
    proc = subprocess.run([sys.executable, str(script), str(pathlib.Path(json_package.__file__).parent),
                           "--points", "3", "--model", str(tiny_model("prefix_only"))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| healed", "| as tokenized"))]
    assert len(rows) == 2
    assert all(0 <= float(cell) <= 1 for row in rows for cell in row.strip("|").split("|")[1:])


# Cursors inside a word where the embedded model, fed the prompt as it tokenizes, writes a different word (measured:
# "getvalu" -> "()", "appe" -> "ase_append(item)"), and healed finishes the one being typed.
WORDS_BEING_TYPED = [
    ("import io\n\n\ndef dump(value):\n    buffer = io.StringIO()\n    buffer.write(value)\n    return buffer.getvalu",
     "e()"),
    ("def test_reads_back(tmp_path):\n    path = tmp_path / 'log.txt'\n    path.write_text('back')\n"
     "    text = path.read_text()\n    asse", "rt "),
    ("import os\n\n\ndef config_dir():\n    return os.path.joi", "n("),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
     "        self.items.appe", "nd(item)"),
]


@pytest.fixture(scope="module")
def embedded_engine(embedded_model_dir):
    return Engine(embedded_model_dir)


@pytest.mark.embedded
@pytest.mark.parametrize(("prompt", "expected"), WORDS_BEING_TYPED)
def test_the_embedded_model_finishes_the_word_being_typed_when_healed(embedded_engine, prompt, expected):
    ids = tuple(embedded_engine.encode(prompt))
    embedded_engine.reset()
    healed = embedded_engine.generate(GenerationRequest(ids, max_new_tokens=8, heal=True, stop_strings=("\n",)))
    embedded_engine.reset()
    plain = embedded_engine.generate(GenerationRequest(ids, max_new_tokens=8, stop_strings=("\n",)))
    assert healed.text.startswith(expected)
    assert not plain.text.startswith(expected)  # the case is one healing decides
