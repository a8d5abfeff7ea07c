"""A trigger word in captions: what is trained on, and what the base model draws the rejected side from."""

from __future__ import annotations

import re
from typing import NamedTuple

TRIGGER_PLACEHOLDER = "[trigger]"


class RowPrompts(NamedTuple):
    """A row's training prompt and the prompt its rejected image is drawn from (None: the same)."""

    prompt: str
    generation_prompt: str | None


def row_prompts(caption: str | None, trigger_word: str | None) -> RowPrompts:
    """The prompts of a caption (None or blank: the image has none) with an optional trigger word.

    The trigger word goes where the caption has `[trigger]`, stays where the caption already has it (as a
    word of its own), else goes in front; the base model draws from the caption without it, so the trigger
    word comes to mean what the images show and the base model does not. Without a trigger word a
    caption is its own prompt ("[trigger]" is refused before this).
    """
    text = " ".join((caption or "").split())
    if trigger_word is None:
        return RowPrompts(text, None)
    if TRIGGER_PLACEHOLDER in text:
        prompt = text.replace(TRIGGER_PLACEHOLDER, trigger_word)
        return RowPrompts(prompt, _without(text, re.escape(TRIGGER_PLACEHOLDER)))
    # A caption written with the trigger word in place ("a photo of sks dog") is not given it twice.
    as_word = rf"(?<!\w){re.escape(trigger_word)}(?!\w)"
    if re.search(as_word, text):
        return RowPrompts(text, _without(text, as_word))
    return RowPrompts(f"{trigger_word} {text}".strip(), text)


def _without(text: str, pattern: str) -> str:
    return " ".join(re.sub(pattern, " ", text).split())
