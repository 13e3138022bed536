"""How people ask for a digit: phrasings per class in three lists with no phrasing in common.

    train     what the prompt adapter is fitted on
    dev       what its settings (search subspace, the unknown-prompt guard) are chosen on, with DEV_UNRELATED
    held-out  what reports, once, after the choice (never fitted on, never chosen on)

The dev and held-out templates are worded differently from the training ones (other nouns, word
order, spelling of the digit), so a model fitted on the training list and scored on the others
shows whether it learned the digit and not the sentence.
"""

from __future__ import annotations

CLASS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {d}: the digit ("7"), {w}: its word ("seven"), {a_d} / {a_w}: "a" or "an" before them
TRAIN_TEMPLATES = (
    "{d}",
    "{w}",
    "the digit {w}",
    "the digit {d}",
    "{a_d} handwritten {d}",
    "{a_w} handwritten {w}",
    "a handwritten digit {w}",
    "draw {a_w} {w}",
    "write the number {d}",
    "an image of the digit {w}",
)
DEV_TEMPLATES = (
    "digit {d}",
    "show me {a_w} {w}",
    "{a_d} {d} drawn by hand",
    "the handwritten number {w}",
    "please draw the digit {d}",
)
HELD_OUT_TEMPLATES = (
    "number {w}",
    "{a_d} {d} written by hand",
    "{w} in handwriting",
    "a picture of {a_w} {w}",
    "sketch the numeral {d}",
    "{a_w} {w}, handwritten",
    "the numeral {w}",
)


# text that asks for no digit: the unknown-prompt guard is set between these and the dev phrasings
DEV_UNRELATED = ("a cat", "the weather in Paris", "a red car", "a bowl of soup", "a mountain at sunset",
                 "my favourite song")
HELD_OUT_UNRELATED = ("a photo of a dog", "how tall is Everest", "a blue sky", "an old wooden door",
                      "a cup of coffee", "the rules of chess")


def _article(word: str) -> str:
    # "an" before a vowel sound: eight, 8, and (as "an 11" would) nothing else among the digits
    return "an" if word in ("eight", "8") else "a"


def _fill(template: str, k: int) -> str:
    d, w = str(k), CLASS_WORDS[k]
    return template.format(d=d, w=w, a_d=_article(d), a_w=_article(w))


def _check(k: int) -> None:
    if not 0 <= k < len(CLASS_WORDS):
        raise ValueError(f"class must be in 0..{len(CLASS_WORDS) - 1}, got {k}")


def train_phrasings(k: int) -> list[str]:
    """The training phrasings of digit k ('7', 'seven', 'the digit seven', 'a handwritten 7', ...)."""
    _check(k)
    return [_fill(t, k) for t in TRAIN_TEMPLATES]


def held_out_phrasings(k: int) -> list[str]:
    """The held-out phrasings of digit k ('number seven', 'a 7 written by hand', ...); never train on these."""
    _check(k)
    return [_fill(t, k) for t in HELD_OUT_TEMPLATES]


def dev_phrasings(k: int) -> list[str]:
    """The dev phrasings of digit k ('digit 7', 'show me a seven', ...): for choosing settings, not for reports."""
    _check(k)
    return [_fill(t, k) for t in DEV_TEMPLATES]


SPLITS = {"train": train_phrasings, "dev": dev_phrasings, "held-out": held_out_phrasings}


def phrasing_set(split: str) -> tuple[list[str], list[int]]:
    """'train', 'dev' or 'held-out' -> every class's phrasings and their (parallel) classes."""
    make = SPLITS.get(split)
    if make is None:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    prompts, labels = [], []
    for k in range(len(CLASS_WORDS)):
        ps = make(k)
        prompts += ps
        labels += [k] * len(ps)
    return prompts, labels
