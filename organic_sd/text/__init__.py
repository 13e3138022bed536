"""Text in: prompts -> a pooled sentence embedding (optional `text` extra), and digit phrasings to train and test on."""

from organic_sd.text.phrasings import (
    CLASS_WORDS,
    DEV_UNRELATED,
    dev_phrasings,
    held_out_phrasings,
    phrasing_set,
    train_phrasings,
)

__all__ = ["CLASS_WORDS", "DEV_UNRELATED", "train_phrasings", "dev_phrasings", "held_out_phrasings", "phrasing_set"]
