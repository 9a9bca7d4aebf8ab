"""Tokenizers: byte-level BPE (a `tokenizer.json`, run by the `tokenizers` library) and
sentencepiece (a `.model`), behind one interface, plus a streaming detokeniser."""
from __future__ import annotations

import json

from .errors import FormatError

KINDS = ("bpe", "spm")


class Tokenizer:
    """encode / decode, the special ids, and whether encode adds BOS."""

    kind: str
    bos_id: int | None
    eos_ids: list[int]

    def __init__(self, special: dict):
        self.bos_id = special.get("bos_id")
        self.eos_ids = list(special.get("eos_ids") or [])
        self.add_bos = bool(special.get("add_bos", False))
        self.add_eos = bool(special.get("add_eos", False))  # a few GGUF vocabularies ask for it

    @staticmethod
    def from_metadata(info: dict | None, blob: bytes, path: str = "model") -> "Tokenizer":
        if not isinstance(info, dict) or info.get("kind") not in KINDS:
            raise FormatError(f"{path}: no usable tokenizer in the metadata; convert the model again")
        try:
            tok = (BPETokenizer if info["kind"] == "bpe" else SentencePieceTokenizer)(blob, info)
        except Exception as e:
            raise FormatError(f"{path}: the {info['kind']} tokenizer could not be loaded: {e}") from None
        special = [tok.bos_id] * (tok.bos_id is not None) + tok.eos_ids
        bad = [i for i in special if not isinstance(i, int) or not 0 <= i < tok.vocab_size]
        if bad:
            raise FormatError(f"{path}: special token id {bad[0]!r} is not in the tokenizer's "
                              f"{tok.vocab_size} tokens; convert the model again")
        return tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, token: int) -> str:
        """The token's text as the vocabulary spells it (its piece: "<s>", "Ġthe", "▁the")."""
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        """The bytes the token stands for, a word-start space included: part of a character
        for some tokens, so decode() of one token alone cannot give them."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, blob: bytes, special: dict):
        from tokenizers import Tokenizer as HFTokenizer
        super().__init__(special)
        self._tok = HFTokenizer.from_str(blob.decode())
        self._byte_level = "ByteLevel" in json.dumps(json.loads(blob).get("decoder"))

    def encode(self, text, add_special_tokens=True):
        # The tokenizer's own post-processor decides what "special tokens" means (BOS for Llama 3).
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids):
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token):
        return self._tok.token_to_id(token)

    def id_to_token(self, token):
        return self._tok.id_to_token(int(token))

    def to_json(self) -> str:
        """The tokenizer as a tokenizer.json (what a grammar engine reads it from)."""
        return self._tok.to_str()

    def token_bytes(self, token):
        piece = self._tok.id_to_token(int(token))
        if piece is not None and self._byte_level and all(c in BYTE_LEVEL for c in piece):
            return bytes(BYTE_LEVEL[c] for c in piece)
        return self.decode([token]).encode()  # an added token written as itself

    @property
    def vocab_size(self):
        return self._tok.get_vocab_size(with_added_tokens=True)


class SentencePieceTokenizer(Tokenizer):
    kind = "spm"

    def __init__(self, blob: bytes, special: dict):
        import sentencepiece as spm
        super().__init__(special)
        if not blob:  # sentencepiece takes an empty model without complaint, then fails to encode
            raise ValueError("the model is empty")
        self._sp = spm.SentencePieceProcessor(model_proto=blob)
        if self._sp.get_piece_size() == 0:
            raise ValueError("the model has no pieces")

    def encode(self, text, add_special_tokens=True):
        ids = self._sp.encode(text)
        if add_special_tokens and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_special_tokens and self.add_eos and self._sp.eos_id() >= 0:
            ids = ids + [self._sp.eos_id()]
        return ids

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids])

    def id_to_token(self, token):
        return self._sp.id_to_piece(int(token))

    def token_to_id(self, token):
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    def special_ids(self) -> list[int]:
        """The control and unknown pieces' ids (<s>, </s>, <unk>): no text stands for them."""
        return [i for i in range(self.vocab_size) if self._sp.is_control(i) or self._sp.is_unknown(i)]

    def token_bytes(self, token):
        piece = self._sp.id_to_piece(int(token))
        if self._sp.is_byte(int(token)):  # <0xNN>
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()

    @property
    def vocab_size(self):
        return self._sp.get_piece_size()


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's characters → the bytes they stand for: a printable Latin-1 byte is
    itself, the others (controls, space, a few more) are the code points from 256 up, in order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


BYTE_LEVEL = _byte_level_alphabet()


class StreamDecoder:
    """Turns a stream of ids into text pieces that never split a UTF-8 character.

    Decoding token by token breaks multi-byte characters and drops the spaces some
    tokenizers add between tokens, so each step decodes a short window of recent ids
    and emits only what has grown past the window's already-emitted prefix.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # ids before this are emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        emitted = self.tok.decode(self.ids[self.prefix:self.read])
        text = self.tok.decode(self.ids[self.prefix:])
        if len(text) <= len(emitted) or text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(emitted):]

    def flush(self) -> str:
        """What is left at the end (an incomplete character, shown as U+FFFD)."""
        emitted = self.tok.decode(self.ids[self.prefix:self.read])
        text = self.tok.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(emitted):]


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a .llmr file, a GGUF file (vocabulary-only ones too), a
    `tokenizer.model`, a `tokenizer.json`, or a Hugging Face checkpoint directory, without
    loading any weights."""
    import os
    from .errors import LlmrunError
    from .models import source_kind
    path = str(path)
    kind = source_kind(path)
    if kind == "hf":
        from .models.hf import _read_json, read_tokenizer
        info, blob = read_tokenizer(path, _read_json(os.path.join(path, "config.json"), required=False))
        return Tokenizer.from_metadata(info, blob, path)
    if kind == "gguf":
        from .models.gguf_file import GGUFFile
        from .models.gguf_tokenizer import tokenizer_from_gguf
        info, blob = tokenizer_from_gguf(GGUFFile(path).metadata)
        return Tokenizer.from_metadata(info, blob, path)
    if kind == "llmr":
        from .format import LlmrFile
        f = LlmrFile(path)
        return Tokenizer.from_metadata(f.metadata.get("tokenizer"), bytes(f.tokenizer_blob), path)
    with open(path, "rb") as f:
        blob = f.read()
    if path.endswith(".json"):
        return Tokenizer.from_metadata({"kind": "bpe"}, blob, path)
    import sentencepiece as spm
    try:
        sp = spm.SentencePieceProcessor(model_proto=blob)
    except Exception:
        raise LlmrunError(f"{path}: not a .llmr, GGUF, tokenizer.json or sentencepiece model") from None
    bos = sp.bos_id()
    return Tokenizer.from_metadata({"kind": "spm", "bos_id": bos if bos >= 0 else None,
                                    "eos_ids": [sp.eos_id()] if sp.eos_id() >= 0 else [], "add_bos": bos >= 0},
                                   blob, path)
