"""SAM 3's text side against Meta's: the tokenizer (ids of Meta's SimpleTokenizer) and the text encoder (Meta's
VETextEncoder, same weights, perturbed)."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from oracle import assert_close_logits
from oracle_sam3 import perturbed, sam3_modules
from sam3_vocab import open_clip_bpe_path, write_clip_vocab

from sam2rt.model.sam3.text import TextEncoder
from sam2rt.processing.text import TextTokenizer, clean_text

pytest.importorskip("tokenizers", reason="SAM 3's tokenizer needs Hugging Face's tokenizers")

PHRASES = [
    "car",
    "red car",
    "A Person's Hat",
    "  extra   spaces\t\nhere ",
    "café au lait",
    "naïve résumé",
    "e\u0301clair",  # decomposed accent: NFC composes it
    "ÀÉÎÕÜ",
    "Straße",
    "İstanbul",
    "ΟΔΟΣ ΣΊΣΥΦΟΣ",  # a word's final sigma lowercases to ς
    "Привет мир",
    "日本語のテキスト",
    "🐶 dog 🚗 👩‍👩‍👧",
    "",
    "!!!",
    "hello, world!",
    "under_score-dash/slash (paren) [bracket]",
    "123 4567 apples",
    "3.14 is π",
    "it's they're we've I'm you'll he'd",
    "person’s “bag”",  # curly quotes: straightened
    "ﬁsh ＲＥＤ car ｶﾀｶﾅ tab\u3000space",  # a ligature, full-width and half-width forms
    "fish &amp; chips &amp;amp; x",  # entities
    "a <b>bold</b> &amp; move",
    "\x00ctrl\x07 chars\ufeff",
    "ǅemal ﬅ ŉ",
    "cafÃ© e&EACUTE;",  # mojibake repaired and all-caps entities read, by ftfy as Meta
    "x" * 400,  # one word of about 100 tokens: cut at the context length
    " ".join(["word"] * 40),
]

# Where Meta's ids differ, and why: Meta's tokenizer turns its special tokens' names typed in a phrase into those
# tokens; ours reads them as plain text.
KNOWN_DIFFERENCES = ["<end_of_text> trick"]


@pytest.fixture(scope="module")
def bpe_gz():
    path = open_clip_bpe_path()
    if path is None:
        pytest.skip("open_clip's bpe_simple_vocab_16e6.txt.gz is absent (pip install open_clip_torch)")
    return path


@pytest.fixture(scope="module")
def tokenizers_pair(bpe_gz, tmp_path_factory):
    """(ours, Meta's) tokenizers over the same CLIP vocabulary."""
    sam3_modules()
    from sam3.model.tokenizer_ve import SimpleTokenizer

    vocab_json, merges_txt = write_clip_vocab(bpe_gz, tmp_path_factory.mktemp("clip_vocab"))
    return TextTokenizer.from_files(vocab_json, merges_txt), SimpleTokenizer(bpe_path=str(bpe_gz))


@pytest.mark.parametrize("context_length", [32, 77, 6])
def test_tokenizer_ids_equal_meta(tokenizers_pair, context_length):
    ours, meta = tokenizers_pair
    ids = ours(PHRASES, context_length=context_length)
    expected = meta(PHRASES, context_length=context_length)
    assert ids.dtype == torch.long and ids.shape == (len(PHRASES), context_length)
    differing = [p for p, a, b in zip(PHRASES, ids, expected) if not torch.equal(a, b)]
    assert not differing, f"ids differ from Meta's for {differing}"
    # not trivial: phrases of one to many tokens, cut ones ending with the end token, padding with 0
    lengths = (ids != 0).sum(1)
    assert lengths.min() == 2 and lengths.max() == context_length
    assert (ids[lengths == context_length, -1] == ours.end_id).all()
    assert len({tuple(row.tolist()) for row in ids}) > len(PHRASES) // 2


def test_tokenizer_known_differences(tokenizers_pair):
    """The phrases listed in KNOWN_DIFFERENCES still differ (if one stops differing, the list is out of date)."""
    ours, meta = tokenizers_pair
    for phrase in KNOWN_DIFFERENCES:
        assert not torch.equal(ours([phrase]), meta([phrase], context_length=32)), phrase


def test_character_fixes_equal_ftfy(tokenizers_pair):
    """Every character that ftfy's per-character fixes change (quotes, ligatures, widths, control characters)
    gives Meta's ids, inside a word and alone."""
    ours, meta = tokenizers_pair
    codes = [*range(0x00, 0x20), 0x7F, 0x02BC, *range(0x2018, 0x2020), *range(0x206A, 0x2070), 0x3000]
    codes += [0x0132, 0x0133, 0x0149, *range(0x01C4, 0x01CD), *range(0x01F1, 0x01F4), *range(0xFB00, 0xFB07)]
    codes += [*range(0xFF01, 0xFFF0), *range(0xFFF9, 0xFFFD), 0xFEFF]
    phrases = [f"a{chr(c)}b {chr(c)}" for c in codes]
    ids, expected = ours(phrases, context_length=16), meta(phrases, context_length=16)
    differing = [hex(c) for c, a, b in zip(codes, ids, expected) if not torch.equal(a, b)]
    assert not differing, f"ids differ from Meta's for characters {differing}"


def test_clean_text():
    assert clean_text("Person’s ＲＥＤ ﬁsh &amp;amp; ΟΔΟΣ") == "person's red fish & οδος"


def test_tokenizer_errors(tokenizers_pair, monkeypatch, tmp_path):
    ours, _ = tokenizers_pair
    with pytest.raises(TypeError):
        ours("a phrase, not a list")
    with pytest.raises(ValueError):
        ours(["car"], context_length=1)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'sam2rt\[sam3\]'"):
        TextTokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def _meta_and_ours(width: int, heads: int, layers: int, d_model: int, tokenizer, seed: int):
    """Meta's VETextEncoder and ours with the same perturbed weights, loaded strictly (the keys are equal)."""
    sam3_modules()
    from sam3.model.text_encoder_ve import VETextEncoder

    torch.manual_seed(seed)
    meta = VETextEncoder(d_model=d_model, tokenizer=tokenizer, width=width, heads=heads, layers=layers).eval()
    # Meta leaves these two uninitialised (torch.empty: whatever the memory held, NaN at times)
    torch.nn.init.normal_(meta.encoder.positional_embedding, std=0.01)
    torch.nn.init.normal_(meta.encoder.text_projection, std=width**-0.5)
    weights = perturbed(meta, seed)
    ours = TextEncoder(d_model=d_model, width=width, num_heads=heads, depth=layers).eval()
    assert set(ours.state_dict()) == set(weights)
    ours.load_state_dict(weights, strict=True)
    return meta, ours


def _compare(meta, ours, tokenizer, phrases) -> dict[str, float]:
    """Both encoders on the phrases; Meta's sequence-first outputs transposed; the max differences."""
    ids = tokenizer(phrases, context_length=32)
    with torch.no_grad():
        meta_mask, meta_memory, meta_embeds = meta(phrases, device="cpu")
        features = ours(ids)
    assert torch.equal(features.padding_mask, meta_mask)
    assert features.padding_mask.any() and not features.padding_mask.all()
    memory, embeds = meta_memory.transpose(0, 1), meta_embeds.transpose(0, 1)  # (L, N, C) -> (N, L, C)
    assert memory.std() > 0.1 and not torch.allclose(memory[0], memory[1], atol=1e-2)
    return {
        "memory": assert_close_logits(features.memory, memory, what="memory"),
        "input_embeds": assert_close_logits(features.input_embeds, embeds, what="input_embeds"),
    }


def test_text_encoder_equals_meta_small(tokenizers_pair):
    ours_tokenizer, meta_tokenizer = tokenizers_pair
    meta, ours = _meta_and_ours(width=64, heads=4, layers=2, d_model=32, tokenizer=meta_tokenizer, seed=1)
    phrases = ["red car", "a person's hat", "🐶", " ".join(["word"] * 40)]
    differences = _compare(meta, ours, ours_tokenizer, phrases)
    print("small text encoder, max |diff| against Meta:", differences)

    # fewer tokens than the context (Meta's transformer slices its causal mask and positions)
    ids = ours_tokenizer(phrases, context_length=32)[:, :9]
    with torch.no_grad():
        _, meta_tokens = meta.encoder(ids)
        tokens, _ = ours.encoder(ids)
    assert_close_logits(tokens, meta_tokens, what="9-token features")


def test_text_encoder_equals_meta_official_size(tokenizers_pair):
    """The official sizes (width 1024, 16 heads, 24 layers, d_model 256); skipped where building takes too long."""
    ours_tokenizer, meta_tokenizer = tokenizers_pair
    start = time.perf_counter()
    meta, ours = _meta_and_ours(width=1024, heads=16, layers=24, d_model=256, tokenizer=meta_tokenizer, seed=2)
    if time.perf_counter() - start > 20:
        pytest.skip("building the official-size encoders took over 20 s")
    differences = _compare(meta, ours, ours_tokenizer, ["red car", "the dog on the left"])
    print("official-size text encoder, max |diff| against Meta:", differences)
