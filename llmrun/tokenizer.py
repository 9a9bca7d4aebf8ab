"""Tokenizers: byte-level BPE (a `tokenizer.json`, run by the `tokenizers` library) and
sentencepiece (a `.model`), behind one interface, plus a streaming detokeniser."""
from __future__ import annotations

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

    @staticmethod
    def from_metadata(info: dict | None, blob: bytes, path: str = "model") -> "Tokenizer":
        if not isinstance(info, dict) or info.get("kind") not in KINDS:
            raise FormatError(f"{path}: no usable tokenizer in the metadata; convert the model again")
        try:
            return (BPETokenizer if info["kind"] == "bpe" else SentencePieceTokenizer)(blob, info)
        except FormatError:
            raise
        except Exception as e:
            raise FormatError(f"{path}: the {info['kind']} tokenizer could not be loaded: {e}") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
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

    def encode(self, text, add_special_tokens=True):
        # The tokenizer's own post-processor decides what "special tokens" means (BOS for Llama 3).
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids):
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token):
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self):
        return self._tok.get_vocab_size(with_added_tokens=True)


class SentencePieceTokenizer(Tokenizer):
    kind = "spm"

    def __init__(self, blob: bytes, special: dict):
        import sentencepiece as spm
        super().__init__(special)
        self._sp = spm.SentencePieceProcessor(model_proto=blob)

    def encode(self, text, add_special_tokens=True):
        ids = self._sp.encode(text)
        if add_special_tokens and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids])

    def token_to_id(self, token):
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    @property
    def vocab_size(self):
        return self._sp.get_piece_size()


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
