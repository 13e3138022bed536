"""Text in for a class-conditional O-UNet: prompt -> sentence embedding -> an OLA module -> the class it asks for.

    prompt --(all-MiniLM-L6-v2, the `text` extra: organic_sd/text)--> (384,) unit embedding
           --(PromptAdapter: an OLA module evolved by ola.fit, no gradients)--> (K,) class scores
           --> the class with the highest score, whose one-hot row is the O-UNet's cond

The adapter is fitted on training phrasings of each class (organic_sd/text/phrasings.py) to
score +1 for the class asked for and -1 for the others; held-out phrasings say whether it learned
the digit rather than the sentence. 100 phrasings span only 100 of the embedding's 384 directions:
a search over all of them leaves the others free and every unseen prompt saturates (held-out 9%),
so the readout searches the principal directions holding 99% of the phrasings' variance (99%).
A prompt far from every class's training phrasings (cosine to the nearest class centroid below
`min_cosine`: "a cat") asks for no class the adapter knows: classify() still names the nearest
class by its scores, and says so (`known` False). Scores cannot tell: an unrelated prompt can
score higher than a held-out digit phrasing.
The adapter lives in the O-UNet's own file; the sentence model is not stored (it is the extra's).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from organic_sd import ola
from organic_sd.ola.module import OLAConfig, OLAModule, load_weights

# dev digit phrasings lie >= 0.55 from their nearest class centroid, dev unrelated prompts ("a cat") <= 0.26
# (bench/prompt_choice.py chose 0.41 on them; held out: >= 0.58 and <= 0.30): the guard sits in that gap
MIN_COSINE = 0.42
READOUT_SHARE = 0.99


@dataclass
class PromptAdapterConfig:
    """What a prompt adapter needs besides its weights."""

    classes: tuple[str, ...]
    encoder: str  # the sentence encoder's id (SentenceEncoder.id): embeddings of another model mean nothing here
    min_cosine: float = MIN_COSINE

    def __post_init__(self):
        self.classes = tuple(str(c) for c in self.classes)


class PromptAdapter(nn.Module):
    """(P, 384) sentence embeddings -> (P, K) class scores in about [-1, 1]; classify() takes the prompts themselves."""

    def __init__(self, config: PromptAdapterConfig, module: OLAModule, centroids: torch.Tensor):
        """`centroids`: (K, D) unit mean embedding of each class's training phrasings (the unknown-prompt guard)."""
        super().__init__()
        K = len(config.classes)
        if module.out_dim != K or tuple(centroids.shape) != (K, module.in_dim):
            raise ValueError(f"a prompt adapter for {K} classes needs {K} outputs and ({K}, {module.in_dim}) centroids, "
                             f"got {module.out_dim} outputs and {tuple(centroids.shape)}")
        self.config, self.module = config, module
        self.register_buffer("centroids", centroids.float())
        self._encoder = None
        self.requires_grad_(False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.module(emb.to(next(self.module.parameters()).device, torch.float32))

    def encoder(self):
        """The sentence encoder (loaded once; needs the `text` extra), checked to be the one fitted on."""
        if self._encoder is None:
            from organic_sd.text.embed import SentenceEncoder

            enc = SentenceEncoder()
            if enc.id != self.config.encoder:
                raise ValueError(f"this prompt adapter was fitted on {self.config.encoder} embeddings, the installed "
                                 f"sentence model is {enc.id}")
            self._encoder = enc
        return self._encoder

    def classify(self, prompts: list[str]) -> list[tuple[int, float, bool]]:
        """Each prompt -> (class index, its score, known): known is False for a prompt far from every class."""
        emb = self.encoder()(prompts)  # (P, D) unit rows
        best, cls = self(emb).max(1)
        near = (emb @ self.centroids.T.cpu()).max(1).values  # (P,) cosine to the nearest class centroid
        return [(int(c), float(b), float(n) >= self.config.min_cosine) for c, b, n in zip(cls, best, near)]

    def state(self) -> tuple[dict, dict]:
        """(tensors, metadata) for the O-UNet file."""
        tensors = {f"prompts.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tensors["prompts_centroids"] = self.centroids.cpu().contiguous()
        return tensors, {"prompt_adapter": json.dumps({"config": asdict(self.config),
                                                       "ola_config": asdict(self.module.config),
                                                       "training": self.module.training_summary}, default=str)}

    @classmethod
    def from_state(cls, md: dict, tensors: dict, where: str) -> PromptAdapter | None:
        """The adapter stored in an O-UNet file, or None if it holds none."""
        state = {k[len("prompts."):]: v for k, v in tensors.items() if k.startswith("prompts.")}
        centroids = tensors.get("prompts_centroids")
        if "prompt_adapter" not in md:
            if state:
                raise ValueError(f"{where}: holds prompt adapter tensors but no prompt adapter config")
            return None
        doc = json.loads(md["prompt_adapter"])
        module = load_weights(OLAModule(OLAConfig(**doc["ola_config"]), doc.get("training", {})), state,
                              f"{where}: prompt adapter")
        if centroids is None:
            raise ValueError(f"{where}: its prompt adapter has no class centroids")
        return cls(PromptAdapterConfig(**doc["config"]), module, centroids)


def fit_prompt_adapter(classes, prompts: list[str], labels: list[int], encoder, *, generations: int = 300,
                       seconds: float | None = None, seed: int = 0, share: float = READOUT_SHARE,
                       min_cosine: float = MIN_COSINE) -> PromptAdapter:
    """Evolve a prompt adapter (ola.fit, linear + tanh) from phrasings and their classes (`share`: of the
    phrasings' embedding variance whose principal directions the readout searches; `min_cosine`: the guard)."""
    K = len(classes)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(labels) != len(prompts) or len(prompts) == 0:
        raise ValueError(f"need one class per prompt, got {len(prompts)} prompts and {len(labels)} classes")
    missing = sorted(set(range(K)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"every class needs training phrasings; none for classes {missing}")
    x = encoder(prompts)  # (P, 384)
    y = 2 * torch.nn.functional.one_hot(labels, K).float() - 1  # (P, K): +1 for the class asked for, -1 elsewhere
    module = ola.fit(x, y, hidden=(), out_scale=1.2, max_seconds=seconds, generations=generations, seed=seed,
                     x_val=x, y_val=y, subspace=ola.Subspace(readout=share))
    # few rows: every phrasing trains; held-out phrasings judge it (callers)
    sums = torch.zeros(K, x.shape[1]).index_add_(0, labels, x)
    return PromptAdapter(PromptAdapterConfig(tuple(classes), encoder.id, min_cosine), module,
                         torch.nn.functional.normalize(sums, dim=1))
