"""Text prompts as SAM 3's token ids: CLIP's byte-level BPE, by Hugging Face's `tokenizers` (an optional extra).

The tokenizer is built from the two files CLIP's vocabulary is published as (`vocab.json`, `merges.txt`, as in
the facebook/sam3 repository) and gives the ids of Meta's own tokenizer for SAM 3: the text cleaned, NFC,
whitespace runs as one space, lower case; split into letter runs, single digits, punctuation runs and English
contractions; each piece byte-level BPE encoded with "</w>" ending a word; framed by the start and end tokens;
padded with id 0 to the context length, or cut to it with the end token kept last.

The text is cleaned first as Meta's tokenizer cleans it, by ftfy. One difference is kept on purpose: the name of
Meta's end token typed in a phrase ("<end_of_text>") is plain text here, the end of the phrase there.
"""

from __future__ import annotations

import html
import unicodedata
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
PAD_ID = 0  # Meta pads with 0 and masks every id 0 as padding (0 is also "!" unmerged inside a piece: rare)
# CLIP's pieces: English contractions, letter runs, single digits, runs of anything else but whitespace
PIECES = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class TextTokenizer:
    """Phrases -> (N, context_length) int64 token ids, as SAM 3's text encoder takes them.

    Build it with `TextTokenizer.from_files(vocab_json, merges_txt)`; needs `pip install 'sam2rt[sam3]'`.
    """

    def __init__(self, tokenizer: Any, start_id: int, end_id: int) -> None:
        self.tokenizer = tokenizer
        self.start_id = start_id
        self.end_id = end_id

    @classmethod
    def from_files(cls, vocab_json: Union[str, Path], merges_txt: Union[str, Path]) -> TextTokenizer:
        """The tokenizer of CLIP's `vocab.json` (token -> id) and `merges.txt` (ranked merges)."""
        tokenizers = _import_tokenizers()
        from tokenizers import Regex, normalizers, pre_tokenizers, processors
        from tokenizers.models import BPE

        model = BPE.from_file(
            str(vocab_json),
            str(merges_txt),
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=END_TOKEN,  # never met: the 256 byte symbols are all in the vocabulary
        )
        tokenizer = tokenizers.Tokenizer(model)
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        # The pieces are kept, what lies between them (whitespace) dropped; the bytes of each piece then become
        # the printable symbols of CLIP's vocabulary (no second split: the pieces are final).
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PIECES), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        start_id, end_id = tokenizer.token_to_id(START_TOKEN), tokenizer.token_to_id(END_TOKEN)
        if start_id is None or end_id is None:
            raise ValueError(f"{vocab_json} lacks CLIP's {START_TOKEN} or {END_TOKEN} token")
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{START_TOKEN} $A {END_TOKEN}", special_tokens=[(START_TOKEN, start_id), (END_TOKEN, end_id)]
        )
        return cls(tokenizer, start_id, end_id)

    def __call__(self, phrases: list[str], context_length: int = 32) -> Tensor:
        """N phrases -> (N, context_length) int64: start, the phrase's tokens, end, then PAD_ID.

        A phrase too long keeps its first context_length - 2 tokens and the end token (as Meta's tokenizer).
        SAM 3's text encoder takes context_length 32.
        """
        if isinstance(phrases, str):
            raise TypeError("phrases is a list of strings; wrap a single phrase as [phrase]")
        if context_length < 2:
            raise ValueError(f"context_length {context_length} cannot hold the start and end tokens")
        encodings = self.tokenizer.encode_batch([clean_text(p) for p in phrases])
        ids = torch.full((len(phrases), context_length), PAD_ID, dtype=torch.long)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids
            if len(tokens) > context_length:
                tokens = tokens[: context_length - 1] + [self.end_id]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids


def clean_text(text: str) -> str:
    """The cleaning of Meta's tokenizer before the tokenizer's own normalizer: `ftfy.fix_text` (mis-decoded text
    repaired, curly quotes straightened, ligatures spelled out, width forms made standard, control characters
    removed, HTML entities decoded where no "<" hints at markup), HTML entities decoded twice more, NFC, lower case.

    Lower case here, by Python as Meta: the normalizer lowercases a letter at a time, so it would turn a word's
    final capital sigma into "σ" where Python writes "ς" ("ΟΔΟΣ" -> "οδος"). On cleaned text the normalizer (kept
    as CLIP's tokenizer has it) only makes whitespace runs one space.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return unicodedata.normalize("NFC", text).lower()


def _import_tokenizers() -> Any:
    try:
        import ftfy  # noqa: F401  (the cleaning, at the first phrase)
        import tokenizers
    except ImportError as error:
        raise ImportError(
            "SAM 3's text prompts need Hugging Face's `tokenizers` and ftfy: pip install 'sam2rt[sam3]'"
        ) from error
    return tokenizers
