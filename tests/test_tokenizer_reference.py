"""A GGUF's tokenizer splits text the way the original model's tokenizer does.

The reference is never rsp's own code: for Gemma's SentencePiece vocabulary, the `sentencepiece`
library's encoder over the model rebuilt from the GGUF (`rsp.models.gguf_tokenizer.sentencepiece_model`);
for SmolLM2's byte-level BPE, a `tokenizers` BPE built straight from the GGUF's tokens and merges with
llama.cpp's pre-tokenisation for the file's `smollm` pre-type (each digit apart, then GPT-2's regex).
The text set is every built-in task's prompts (arithmetic at the map's settings, GSM8K with its few-shot
examples, MATH-style problems) plus digits, whitespace runs, newlines and non-ASCII text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rsp.models.gguf_tokenizer import (
    CONTROL,
    NORMAL,
    TOKENIZER_FORMAT,
    USER_DEFINED,
    GGUFVocab,
    gemma_tokenizer,
    original_piece_types,
    sentencepiece_model,
)

EDGE_TEXTS = (
    " reason",
    " now",
    "Question",
    "Hello world! 12 + 345 = 357.",
    "0 1 22 333 4444 55555 1234567890 3.14159 -42 1,000,000 2^10 10^{-3}",
    "a  b   c    d     e" + " " * 17 + "f" + " " * 40 + "g",
    "  leading spaces",
    "trailing spaces   ",
    "line\nbreaks\n\nand\n\n\nruns\n \n\t\ttabs\t x\r\n",
    "café naïve résumé Ångström über façade",
    "中文 日本語のテキスト 한국어",
    "emoji 😀👍🏽 🫩 ❤️ 🇫🇷",
    "\\boxed{\\frac{1}{2}} $x^2 + y_1 = \\sqrt{3}$",
    "<start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model",
)


def prompt_texts(tokenizer, style: str) -> list[tuple[str, str]]:
    """(head, tail) of the prompts rsp builds for the built-in tasks, as `PromptBuilder` renders them."""
    from rsp.tasks.datasets import BENCHMARKS, find_data_file
    from rsp.tasks.prompts import PromptBuilder
    from rsp.tasks.registry import load_task

    tasks = [
        load_task("arith", arith_steps=s, arith_max_value=v, limit=6) for s, v in ((1, 10), (2, 20), (3, 20))
    ]
    for name in ("gsm8k", "math500", "minerva"):
        if find_data_file(BENCHMARKS[name].files["test"]) is not None:  # only local data: no Hub here
            tasks.append(load_task(name, limit=6))
    out = []
    for task in tasks:
        builder = PromptBuilder.for_task(tokenizer, task, style=style)  # type: ignore[arg-type]
        out += [builder.render(p) for p in task.problems]
    return out


def _synthetic_gemma_vocab() -> GGUFVocab:
    """A tiny Gemma-style vocabulary where the two readings disagree: `▁reason` is reached only by the
    last merge (score -20), so Viterbi over the scores prefers `▁re`+`as`+`on` (-4 -2 -1)."""
    specials = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", CONTROL)]
    specials += [("<start_of_turn>", CONTROL), ("\n", USER_DEFINED), ("  ", USER_DEFINED)]
    bytes_ = [(f"<0x{b:02X}>", 6) for b in range(256)]
    merged = [("on", -1.0), ("as", -2.0), ("▁r", -3.0), ("▁re", -4.0), ("ason", -5.0), ("▁reason", -20.0)]
    chars = [(c, -100.0 - i) for i, c in enumerate("▁reason")]
    pieces = [(p, 0.0, t) for p, t in specials] + [(p, 0.0, t) for p, t in bytes_]
    pieces += [(p, s, NORMAL) for p, s in merged + chars]
    return GGUFVocab(
        architecture="gemma3",
        model="llama",
        pre="default",
        tokens=[p for p, _, _ in pieces],
        scores=[s for _, s, _ in pieces],
        types=[t for _, _, t in pieces],
        merges=[],
        bos_id=2,
        eos_id=1,
        unk_id=3,
        pad_id=0,
        add_bos=True,
        add_space_prefix=False,
    )


def test_gemma_reading_is_bpe_by_score_as_sentencepiece_reads_it():
    """On a vocabulary where a Unigram reading of the scores splits `▁reason` into three pieces, rsp's
    tokenizer and the sentencepiece library both merge it whole."""
    import sentencepiece as spm

    vocab = _synthetic_gemma_vocab()
    reference = spm.SentencePieceProcessor(model_proto=sentencepiece_model(vocab))
    tok = gemma_tokenizer(vocab)
    whole = vocab.tokens.index("▁reason")
    for text in (" reason", "reason reason", " reason\n  reason", "<start_of_turn> reason", "é reason"):
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text), text
    assert tok(" reason", add_special_tokens=False)["input_ids"] == [whole]
    assert tok(" reason")["input_ids"] == [2, whole], "BOS first, as the GGUF asks"


def test_original_piece_types_undo_the_gguf_converters_retyping():
    vocab = _synthetic_gemma_vocab()
    types = dict(original_piece_types(vocab))
    assert types["<bos>"] == CONTROL and types["<pad>"] == CONTROL and types["<unk>"] == 2
    assert types["<start_of_turn>"] == USER_DEFINED, "a tag-like added token: control only in the GGUF"
    assert "\u2581\u2581" in types and "  " not in types, "user-defined spaces are `▁` in the model"


def test_a_cache_without_the_current_stamp_is_converted_again(tmp_path, caplog):
    """A cache converted before the tokenizer fix (no stamp) or by another format is not reused: the
    conversion runs again (here it fails on a file that is not a GGUF, which shows it ran) and says why;
    a current one is reused without reading the GGUF at all."""
    from rsp.models.loading import CONVERSION_STAMP, ModelLoadError, conversion_is_current, convert_gguf

    target = tmp_path / "models" / "gemma"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf")
    current, why = conversion_is_current(target)
    assert not current and CONVERSION_STAMP in why
    with (
        caplog.at_level(logging.WARNING, logger="rsp.models.loading"),
        pytest.raises(ModelLoadError, match="could not read GGUF file"),
    ):
        convert_gguf(fake, target)
    assert "out of date" in caplog.text and "converted before tokenizer format" in caplog.text

    (target / CONVERSION_STAMP).write_text(json.dumps({"tokenizer_format": TOKENIZER_FORMAT - 1}))
    assert not conversion_is_current(target)[0]
    (target / CONVERSION_STAMP).write_text(json.dumps({"tokenizer_format": TOKENIZER_FORMAT}))
    assert conversion_is_current(target) == (True, "current")
    assert convert_gguf(fake, target) == target  # reused: the bad file is never opened


def test_two_processes_converting_one_cache_at_once_convert_it_once(tmp_path, monkeypatch):
    """Parallel test workers, or two jobs on a fresh machine, both find no cache: one converts, the other
    waits for it and reuses its directory instead of deleting it under the first one's readers."""
    import threading
    import time

    from rsp.models import loading

    target = tmp_path / "models" / "smollm2"
    calls = []

    def slow_convert(gguf_path, target, why):  # stands in for the real conversion (tens of seconds)
        calls.append(why)
        time.sleep(0.3)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / loading.CONVERSION_STAMP).write_text(json.dumps({"tokenizer_format": TOKENIZER_FORMAT}))
        return target

    monkeypatch.setattr(loading, "_convert_gguf_locked", slow_convert)
    got: list = []
    threads = [
        threading.Thread(target=lambda: got.append(loading.convert_gguf(tmp_path / "x.gguf", target)))
        for _ in range(3)
    ]  # flock locks per open file, so threads contend as processes do
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [target] * 3
    assert calls == ["not converted yet"], "converted more than once"


# --- the real models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_location() -> str:
    from rsp.models.loading import resolve_model_dir

    return resolve_model_dir("gemma3-270m")[0]


@pytest.fixture(scope="module")
def gemma_gguf(gemma_location) -> Path:
    from rsp.models.loading import default_cache_dir
    from rsp.models.packaged import locate_packaged_gguf

    return locate_packaged_gguf("gemma3-270m", default_cache_dir() / "gguf")


@pytest.mark.real_model
def test_gemma_reads_whole_words(gemma_location):
    """The three splits that gave the bug away: whole-word tokens exist and are used."""
    from rsp.models.loading import CONVERSION_STAMP, load_tokenizer

    tok = load_tokenizer(gemma_location)
    assert tok(" reason", add_special_tokens=False)["input_ids"] == [3282]  # was ▁re as on: 544 527 498
    assert tok(" now", add_special_tokens=False)["input_ids"] == [1492]  # was ▁n ow
    assert tok("Question", add_special_tokens=False)["input_ids"] == [14977]  # was Qu est ion
    assert tok("Question")["input_ids"] == [2, 14977], "BOS first (tokenizer.ggml.add_bos_token)"
    stamp = json.loads((Path(gemma_location) / CONVERSION_STAMP).read_text())
    assert stamp["tokenizer_format"] == TOKENIZER_FORMAT


@pytest.mark.real_model
@pytest.mark.slow
def test_gemma_tokenizer_agrees_with_sentencepiece_on_every_prompt(gemma_location, gemma_gguf):
    """The cached tokenizer (`--model gemma3-270m`) and the one built for a `--model file.gguf` path
    (`tokenizer_from_gguf`, which conversion uses for both) agree with sentencepiece's encoder, prompt
    by prompt, as rsp tokenises prompts (head with BOS, then tail)."""
    import sentencepiece as spm

    from rsp.models.gguf_tokenizer import read_gguf_vocab, tokenizer_from_gguf
    from rsp.models.loading import load_tokenizer
    from rsp.tasks.prompts import tokenize_split

    vocab = read_gguf_vocab(gemma_gguf)
    reference = spm.SentencePieceProcessor(model_proto=sentencepiece_model(vocab))
    cached = load_tokenizer(gemma_location)
    from_path = tokenizer_from_gguf(gemma_gguf, vocab)
    pairs = prompt_texts(cached, "plain") + [(t, "") for t in EDGE_TEXTS]
    assert len(pairs) >= 18 + len(EDGE_TEXTS)
    for head, tail in pairs:
        expected = [vocab.bos_id] + reference.encode(head) + (reference.encode(tail) if tail else [])
        for tok in (cached, from_path):
            assert list(tokenize_split(tok, head, tail, add_special_tokens=True).ids) == expected, head[-80:]
        assert cached(head + tail)["input_ids"] == [vocab.bos_id] + reference.encode(head + tail)


def smollm_reference(vocab: GGUFVocab):
    """A `tokenizers` BPE from the GGUF's tokens and merges, pre-tokenised as llama.cpp does for the
    `smollm` pre-type: every digit on its own, then GPT-2's byte-level regex; control tokens special."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    assert vocab.model == "gpt2" and vocab.pre == "smollm"
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(vocab.tokens)},
        merges=[tuple(m.split(" ", 1)) for m in vocab.merges],
    )
    ref = Tokenizer(bpe)
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    ref.decoder = decoders.ByteLevel()
    control = [t for t, k in zip(vocab.tokens, vocab.types, strict=True) if k == CONTROL]
    ref.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return ref


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_tokenizer_agrees_with_a_bpe_built_from_the_gguf_merges(smollm2):
    from rsp.models.gguf_tokenizer import read_gguf_vocab, tokenizer_from_gguf
    from rsp.models.packaged import locate_packaged_gguf
    from rsp.tasks.prompts import tokenize_split

    gguf = locate_packaged_gguf("smollm2-135m-instruct", smollm2.stats_cache_dir)
    vocab = read_gguf_vocab(gguf)
    reference = smollm_reference(vocab)
    from_path = tokenizer_from_gguf(gguf, vocab)

    def ref(text: str) -> list[int]:
        return reference.encode(text, add_special_tokens=False).ids

    pairs = prompt_texts(smollm2.tokenizer, "auto") + prompt_texts(smollm2.tokenizer, "plain")
    pairs += [(t, "") for t in EDGE_TEXTS]
    assert not vocab.add_bos  # the file says: no BOS; so a plain call adds nothing either
    for head, tail in pairs:
        expected = ref(head) + (ref(tail) if tail else [])
        for tok in (smollm2.tokenizer, from_path):
            assert list(tokenize_split(tok, head, tail, add_special_tokens=False).ids) == expected, head[-80:]
        assert smollm2.tokenizer(head + tail)["input_ids"] == ref(head + tail)


# --- the GGUF metadata reader, against gguf-py's own ------------------------------------------------------
def _reference_metadata(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("big_endian", [False, True])
def test_gguf_metadata_reader_returns_what_gguf_py_reads_for_every_value_type(tmp_path, big_endian):
    import gguf

    from rsp.models.gguf_tokenizer import read_gguf_metadata

    T = gguf.GGUFValueType
    path = tmp_path / "all-types.gguf"
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    scalars = {
        T.UINT8: 200,
        T.INT8: -100,
        T.UINT16: 60000,
        T.INT16: -30000,
        T.UINT32: 4_000_000_000,
        T.INT32: -2_000_000_000,
        T.FLOAT32: 0.1,
        T.BOOL: True,
        T.UINT64: 2**63 + 5,
        T.INT64: -(2**62),
        T.FLOAT64: 0.1,
        T.STRING: "▁héllo <0x0A> 中文 😀",
    }
    for vtype, val in scalars.items():
        writer.add_key_value(f"test.scalar.{vtype.name.lower()}", val, vtype)
    writer.add_key_value("test.array.int32", [3, -1, 7], T.ARRAY, T.INT32)
    writer.add_key_value("test.array.float32", [0.5, -2.25, 1e-3], T.ARRAY, T.FLOAT32)
    writer.add_key_value("test.array.bool", [True, False], T.ARRAY, T.BOOL)
    writer.add_key_value("test.array.string", ["a", "", "▁b c", "中"], T.ARRAY, T.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = read_gguf_metadata(path)
    assert ours == _reference_metadata(path)
    assert ours["test.scalar.uint64"] == 2**63 + 5 and ours["test.array.string"] == ["a", "", "▁b c", "中"]


def test_gguf_metadata_reader_refuses_a_file_that_is_not_gguf(tmp_path):
    from rsp.models.gguf_tokenizer import read_gguf_metadata

    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf_metadata(path)


@pytest.mark.real_model
@pytest.mark.slow
def test_gguf_metadata_reader_returns_what_gguf_py_reads_for_the_packaged_smollm2(smollm2):
    """The whole metadata of a real file (49k tokens and merges), key by key. (Gemma's file holds the same
    kinds of fields; gguf-py's reader takes 20 s over its 262k tokens, the reason this reader exists.)"""
    from rsp.models.gguf_tokenizer import read_gguf_metadata
    from rsp.models.packaged import locate_packaged_gguf

    gguf_path = locate_packaged_gguf("smollm2-135m-instruct", smollm2.stats_cache_dir)
    ours, reference = read_gguf_metadata(gguf_path), _reference_metadata(gguf_path)
    assert len(reference["tokenizer.ggml.tokens"]) > 40_000
    assert ours == reference
