"""The tokenizer a GGUF file describes, built so that it splits text the way the original model did.

Why: transformers (5.17) turns a Gemma GGUF's SentencePiece vocabulary into a *Unigram* tokenizer and runs
Viterbi over the scores, but Gemma's tokenizer is SentencePiece *BPE*, whose scores are merge priorities:
`" reason"` became `▁re as on`, and prompts came out half again as long as Gemma reads them. Built
instead: `gemma_tokenizer`, transformers' `GemmaTokenizer` with the GGUF's vocabulary, merges ordered by
score (the order SentencePiece BPE applies them in) and its control and user-defined tokens; and, as the
reference it is tested against, `sentencepiece_model`, the SentencePiece model the GGUF came from
(llama.cpp's changes to tag-like pieces undone). `TOKENIZER_FORMAT` is stamped into each converted
cache, so older caches are converted again (`rsp.models.loading.conversion_is_current`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The GGUF conversion's version: 1 (no stamp), transformers' Unigram reading of Gemma; 2, SentencePiece BPE.
TOKENIZER_FORMAT = 2

GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma4", "gemma4_text")
# SentencePiece piece types; llama.cpp's token types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer fields of a GGUF file (`tokenizer.ggml.*`)."""

    architecture: str
    model: str  # "llama" (SentencePiece), "gpt2" (byte-level BPE), ...
    pre: str | None
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_space_prefix: bool

    @property
    def is_gemma_sentencepiece(self) -> bool:
        """Whether transformers would read this vocabulary with its Unigram Gemma converter."""
        return self.model == "llama" and self.architecture in GEMMA_ARCHITECTURES


# GGUF metadata value types (the GGUF specification; gguf-py's GGUFValueType) and their fixed-size layouts.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file (versions 2 and 3, either byte order) with its value: a Python
    scalar, a string, or a list. Only the file's head is read, through a memory map. Written here because
    `gguf.GGUFReader` makes a numpy view per array element and took 20 s for Gemma's 262k-token vocabulary;
    this takes a fraction of a second, and tests/test_tokenizer_reference.py checks it value for value
    against `gguf.GGUFReader`."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        (version,) = struct.unpack_from("<I", buf, 4)
        order = "<" if version & 0xFFFF else ">"  # a big-endian file's version reads byte-swapped
        (version,) = struct.unpack_from(order + "I", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        _, n_kv = struct.unpack_from(order + "QQ", buf, 8)
        pos = 24

        def take(fmt: str) -> Any:
            nonlocal pos
            (value,) = struct.unpack_from(order + fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("Q")
            pos += n
            return buf[pos - n : pos].decode("utf-8")

        def value(kind: int) -> Any:
            nonlocal pos
            if kind in _SCALARS:
                return take(_SCALARS[kind])
            if kind == _STRING:
                return string()
            if kind != _ARRAY:
                raise ValueError(f"{path}: unknown GGUF value type {kind} at byte {pos}")
            inner, count = take("I"), take("Q")
            if inner in _SCALARS:
                fmt = f"{order}{count}{_SCALARS[inner]}"
                items = list(struct.unpack_from(fmt, buf, pos))
                pos += struct.calcsize(fmt)
                return items
            return [value(inner) for _ in range(count)]

        metadata = {}
        for _ in range(n_kv):
            key = string()
            metadata[key] = value(take("I"))
        return metadata


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """Read the tokenizer fields of a GGUF file (`read_gguf_metadata`)."""
    meta = read_gguf_metadata(path)

    def optional_int(key: str) -> int | None:
        value = meta.get(key)
        return int(value) if value is not None else None

    add_space = meta.get("tokenizer.ggml.add_space_prefix")
    model = str(meta.get("tokenizer.ggml.model"))
    return GGUFVocab(
        architecture=str(meta.get("general.architecture")),
        model=model,
        pre=meta.get("tokenizer.ggml.pre"),
        tokens=[str(t) for t in meta.get("tokenizer.ggml.tokens", [])],
        scores=[float(s) for s in meta.get("tokenizer.ggml.scores", [])],
        types=[int(t) for t in meta.get("tokenizer.ggml.token_type", [])],
        merges=[str(m) for m in meta.get("tokenizer.ggml.merges", [])],
        bos_id=optional_int("tokenizer.ggml.bos_token_id"),
        eos_id=optional_int("tokenizer.ggml.eos_token_id"),
        unk_id=optional_int("tokenizer.ggml.unknown_token_id"),
        pad_id=optional_int("tokenizer.ggml.padding_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token")),
        # llama.cpp's default for a SentencePiece vocabulary without the field is True
        add_space_prefix=bool(add_space) if add_space is not None else model == "llama",
    )


def original_piece_types(vocab: GGUFVocab) -> list[tuple[str, int]]:
    """(piece, SentencePiece type) as in the model the GGUF was converted from: llama.cpp typed every
    tag-like added token CONTROL and wrote `▁` as a space in user-defined ones; in SentencePiece only BOS,
    EOS and PAD are control pieces, UNK is UNKNOWN, and the rest are USER_DEFINED."""
    keep_control = {i for i in (vocab.bos_id, vocab.eos_id, vocab.pad_id) if i is not None}
    out = []
    for i, (piece, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True)):
        if i == vocab.unk_id:
            kind = UNKNOWN
        elif kind == CONTROL and i not in keep_control:
            kind = USER_DEFINED
        if kind == USER_DEFINED:
            piece = piece.replace(" ", "\u2581")
        out.append((piece, kind))
    return out


def sentencepiece_model(vocab: GGUFVocab) -> bytes:
    """A serialised SentencePiece BPE `ModelProto` equivalent to the GGUF's tokenizer: identity
    normalisation, whitespace escaped to `▁` and kept as written, byte fallback, and a dummy prefix only
    where the GGUF asks for one (`add_space_prefix`; false for Gemma)."""
    from sentencepiece import sentencepiece_model_pb2

    pb: Any = sentencepiece_model_pb2  # generated protobuf classes: attributes made at import time
    if vocab.model != "llama":
        raise ValueError(f"GGUF tokenizer model {vocab.model!r} is not a SentencePiece model")
    proto = pb.ModelProto()
    for (piece, kind), score in zip(original_piece_types(vocab), vocab.scores, strict=True):
        entry = proto.pieces.add()
        entry.piece = piece
        entry.type = kind
        entry.score = score if kind == NORMAL else 0.0
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = True
    spec.split_digits = True
    for name in ("unk", "bos", "eos", "pad"):
        ident = getattr(vocab, f"{name}_id")
        setattr(spec, f"{name}_id", ident if ident is not None else -1)
        if ident is not None:
            setattr(spec, f"{name}_piece", vocab.tokens[ident])
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = vocab.add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def gemma_tokenizer(vocab: GGUFVocab):
    """transformers' `GemmaTokenizer` with the GGUF's vocabulary, score-ordered merges and added tokens."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    if not vocab.is_gemma_sentencepiece:
        raise ValueError(f"not a Gemma SentencePiece vocabulary: {vocab.architecture}/{vocab.model}")
    ids = {piece: i for i, piece in enumerate(vocab.tokens)}
    normal = [(p, s) for p, s, t in zip(vocab.tokens, vocab.scores, vocab.types, strict=True) if t == NORMAL]
    # SentencePiece BPE merges the adjacent pair whose joined piece scores highest, and only NORMAL
    # pieces take part; bytes, control and user-defined pieces never result from a merge.
    merges = generate_merges({p: ids[p] for p, _ in normal}, dict(normal))

    def name(i: int | None, default: str) -> str:
        return vocab.tokens[i] if i is not None else default

    tok = GemmaTokenizer(
        vocab=ids,
        merges=merges,
        unk_token=name(vocab.unk_id, "<unk>"),
        bos_token=name(vocab.bos_id, "<bos>"),
        eos_token=name(vocab.eos_id, "<eos>"),
        pad_token=name(vocab.pad_id, "<pad>"),
        add_bos_token=vocab.add_bos,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    for kind, special in ((CONTROL, True), (USER_DEFINED, False)):
        pieces = [p for p, t in zip(vocab.tokens, vocab.types, strict=True) if t == kind]
        tok.add_tokens(
            [AddedToken(p, normalized=False, special=special) for p in pieces], special_tokens=special
        )
    return tok


def tokenizer_from_gguf(path: Path, vocab: GGUFVocab | None = None):
    """The tokenizer of a GGUF file: `gemma_tokenizer` for Gemma's SentencePiece vocabulary, else
    transformers' own GGUF reading (its byte-level BPE path builds the merges the file lists)."""
    from transformers import AutoTokenizer

    vocab = vocab or read_gguf_vocab(path)
    if vocab.is_gemma_sentencepiece:
        return gemma_tokenizer(vocab)
    tok = AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, clean_up_tokenization_spaces=False
    )
    if vocab.add_bos:
        # transformers' GGUF tokenizer ignores tokenizer.ggml.add_bos_token. (The property's setter
        # is defined apart from its getter, which mypy reads as read-only.)
        tok.add_bos_token = True  # type: ignore[misc]
    return tok
