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


# Qwen3's chat template, reduced to what ZImagePipeline renders (system / user / assistant messages, no tools): each
# message as <|im_start|>ROLE\nCONTENT<|im_end|>\n, then the assistant's turn; with enable_thinking=False an empty
# think block, as Qwen3's own template writes it.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


# Qwen2-VL / Qwen2.5-VL's special tokens, in the real tokenizer's order (ids 151643..151656 there), for the VLM judges'
# tiny model; and words that are one token each in the real vocabulary (the judges' answers among them).
QWEN_VL_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_WORDS = ("Yes", "No", "yes", "no", "YES", "NO")


def qwen_tokenizer_files(out: Path, special: tuple[str, ...] = QWEN_SPECIAL, words: tuple[str, ...] = (),
                         chat_template: str | None = QWEN_CHAT_TEMPLATE, max_length: int = 512) -> Path:
    """Write a Qwen2Tokenizer folder (the class of Qwen3's tokenizer): Qwen's byte-level BPE layout over the 256 byte
    symbols (so any prompt in any language tokenises without <unk>), Qwen's special tokens (<|endoftext|> as pad,
    <|im_start|>, <|im_end|>, <think>, </think>) and its chat template. No merges, one token per UTF-8 byte, except
    that each of `words` is one token, alone and after a space (as in the real vocabulary). Qwen3's real 151k-token
    vocabulary cannot be downloaded here; the real models load the hub's. Same bytes everywhere."""
    from transformers import Qwen2Tokenizer

    to_char = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(to_char.values())}
    merges: list[tuple[str, str]] = []
    for word in words:  # "word" by merging its characters left to right, then " word" = the space's char + "word"
        chars = [to_char[b] for b in word.encode()]
        for c in chars[1:]:
            merges.append((chars[0], c))
            chars[0] += c
            vocab.setdefault(chars[0], len(vocab))
    for word in words:
        merges.append((to_char[32], word))
        vocab.setdefault(to_char[32] + word, len(vocab))
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(special)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=max_length)
    tok.add_special_tokens({"additional_special_tokens": list(special[1:])})
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(str(out))
    return out


def qwen_vl_tokenizer_files(out: Path) -> Path:
    """The tiny VLM judge's tokenizer: qwen_tokenizer_files with Qwen2.5-VL's special tokens and one-token answers
    (its chat template is the processor's; 32768 tokens, as Qwen2.5-VL's)."""
    return qwen_tokenizer_files(out, QWEN_VL_SPECIAL, QWEN_VL_WORDS, chat_template=None, max_length=32768)


def qwen_tokenizer():
    """The offline byte-level Qwen tokenizer (see qwen_tokenizer_files), loaded as Qwen2Tokenizer."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(cached_build("qwen-tokenizer", qwen_tokenizer_files)))


# Mistral Small 3.x's chat template, reduced to what Flux2Pipeline renders (a system message, then user messages whose
# content is a list of text parts or a string): <s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST].
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.content is string %}{%- set text = message.content %}"
    "{%- else %}{%- set text = message.content | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') %}"
    "{%- endif %}"
    "{%- if message.role == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message.role == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}{%- endfor %}"
)
MISTRAL_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                   "[IMG_BREAK]", "[IMG_END]")


def mistral_processor_files(out: Path) -> Path:
    """Write a PixtralProcessor folder (what Flux2Pipeline's `tokenizer` is: Mistral Small 3.x's processor, an image
    processor with a tokenizer): a byte-level BPE PreTrainedTokenizerFast over the 256 byte symbols with no merges
    (one token per UTF-8 byte), Mistral's special tokens (<s>, </s>, <pad>, [INST], [SYSTEM_PROMPT], the [IMG] tokens)
    and its chat template. Mistral's real 131k-token Tekken vocabulary cannot be downloaded here; the real model loads
    the hub's. Same bytes everywhere."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(MISTRAL_SPECIAL)}
    vocab.update({c: len(MISTRAL_SPECIAL) + i for i, c in enumerate(_bytes_to_unicode().values())})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", additional_special_tokens=list(MISTRAL_SPECIAL[4:]),
                                  model_max_length=512)
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(patch_size=16), tokenizer=tok, patch_size=16,
                                 chat_template=MISTRAL_CHAT_TEMPLATE)
    processor.save_pretrained(str(out))
    return out


def mistral_processor():
    """The offline Mistral processor (see mistral_processor_files), loaded as PixtralProcessor."""
    from transformers import PixtralProcessor

    return PixtralProcessor.from_pretrained(str(cached_build("mistral-processor", mistral_processor_files)))
