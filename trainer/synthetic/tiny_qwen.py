"""A tiny Qwen-style tokenizer built offline, for the families whose text encoder is a Qwen model
(FLUX.2 [klein] and Z-Image: Qwen3; Qwen-Image: Qwen2.5-VL).

A byte-level BPE trained here with `tokenizers` on tiny.CORPUS (and whatever template text a family's
pipeline wraps prompts in, so that the template's words are single tokens as in the real vocabulary),
with Qwen2's pre-tokenizer split, the chat special tokens and a chat template that renders what Qwen3's
renders for the messages the pipelines pass (`enable_thinking` included). Saved as tokenizer.json and
read back as `Qwen2Tokenizer`, so it loads exactly as a real checkpoint's does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AddedToken, Qwen2Tokenizer

from trainer.synthetic import tiny

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
# Qwen2's pre-tokenizer split (transformers' qwen2 PRETOKENIZE_REGEX).
SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
MAX_VOCAB = 2000  # an upper bound: training stops when no pair of the corpus is left to merge

# Qwen3's chat template, reduced to what the pipelines use: text messages, the generation prompt, and
# the empty think block that enable_thinking=False appends.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- else %}{%- set content = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def build_qwen_tokenizer(directory: Path, *, template_text: Sequence[str] = ()) -> Qwen2Tokenizer:
    """Train, save to `directory` and read back a Qwen2Tokenizer; `template_text` is text the family's
    pipeline puts around every prompt (trained on too, so its words are single tokens)."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MAX_VOCAB,
        min_frequency=1,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word with and without a leading space, so " red" and "red" are both one token.
    corpus = [tiny.CORPUS, " " + tiny.CORPUS, "user\nassistant\nsystem\n" * 4, *template_text]
    bpe.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,  # as the Qwen instruct models: eos <|im_end|>, pad <|endoftext|>
        pad_token=END_OF_TEXT,
        model_max_length=131072,
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.add_tokens([AddedToken(THINK, special=False), AddedToken(END_THINK, special=False)])
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    loaded: Qwen2Tokenizer = Qwen2Tokenizer.from_pretrained(str(directory))
    return loaded
