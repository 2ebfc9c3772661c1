"""Offline tokenizers for the tiny models: the real CLIP BPE tokenizer, built from the vocabulary open_clip ships,
and a small character-level T5 tokenizer (T5's real SentencePiece vocabulary cannot be downloaded here; the real
models load the hub's)."""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path

import open_clip
from transformers import CLIPTokenizer, T5TokenizerFast

from aifeedback.zoo.cache import cached_build


def clip_tokenizer_files(out: Path) -> Path:
    """Write vocab.json + merges.txt of the CLIP BPE tokenizer from open_clip's bundled vocab into `out`."""

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # same slice as CLIP's own tokenizer
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return out


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte->printable-character table: every byte gets a visible unicode char, so BPE never sees
    # whitespace or control bytes.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP tokenizer (49408 tokens, max length 77), built offline."""

    d = cached_build("clip-tokenizer", clip_tokenizer_files)
    return CLIPTokenizer.from_pretrained(str(d), pad_token=pad_token, model_max_length=77)


VOCAB_SIZE = 49408


BOS, EOS = 49406, 49407


T5_MAX_LENGTH = 256  # what StableDiffusion3Pipeline pads T5 prompts to by default (max_sequence_length)


def t5_tokenizer_files(out: Path) -> Path:
    """Write a T5TokenizerFast folder: T5's layout (<pad> 0, </s> 1, <unk> 2, the word-start mark, 100 sentinels,
    the Metaspace pre-tokenizer and </s> appended) over a unigram vocabulary of the printable ASCII characters,
    each alone and word-initial, so any English prompt tokenises without <unk>. Fixed list, same bytes everywhere."""
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -3.0) for c in chars]
    T5TokenizerFast(vocab=pieces, model_max_length=T5_MAX_LENGTH).save_pretrained(str(out))
    return out


def t5_tokenizer():
    """The offline character-level T5 tokenizer (see t5_tokenizer_files), loaded as T5TokenizerFast."""
    return T5TokenizerFast.from_pretrained(str(cached_build("t5-tokenizer", t5_tokenizer_files)))


# Qwen2's special tokens in the order of the real tokenizer (ids 151643..151656 there; here right after the vocabulary).
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Words that are one token each, as in the real Qwen2 vocabulary (the VLM judges' answers among them).
QWEN_WORDS = ("Yes", "No", "yes", "no", "YES", "NO")


def qwen_tokenizer_files(out: Path) -> Path:
    """A Qwen2TokenizerFast folder: byte-level BPE (GPT-2 byte alphabet, so any text tokenises) whose merges make each
    of QWEN_WORDS one token, alone and after a space, and Qwen2's special tokens. Fixed lists, same bytes everywhere."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    to_char = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(to_char.values())}
    merges: list[tuple[str, str]] = []
    for word in QWEN_WORDS:
        chars = [to_char[b] for b in word.encode()]
        piece = chars[0]
        for c in chars[1:]:
            if (piece, c) not in merges:
                merges.append((piece, c))
            piece += c
            vocab.setdefault(piece, len(vocab))
    for word in QWEN_WORDS:  # then " word" = the space's character + the word
        merges.append((to_char[32], word))
        vocab.setdefault(to_char[32] + word, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", model_max_length=32768)
    fast.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL)})
    fast.save_pretrained(str(out))
    return out
