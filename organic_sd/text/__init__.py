"""Text in: prompts -> a pooled sentence embedding (optional `text` extra), and digit phrasings to train and test on."""

from organic_sd.text.phrasings import CLASS_WORDS, held_out_phrasings, phrasing_set, train_phrasings

__all__ = ["CLASS_WORDS", "train_phrasings", "held_out_phrasings", "phrasing_set"]
