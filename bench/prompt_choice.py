"""The prompt adapter's settings chosen on dev phrasings, then reported once on held-out ones.

    python bench/prompt_choice.py [--shares 0.9 0.95 0.99 1.0] [--seeds 0 1 2] [--generations 300] [--json OUT]

Needs the `text` extra (MiniLM). For each readout share (the principal directions of the phrasings'
embeddings the adapter's search may use) and seed, an adapter is fitted on the training phrasings
and scored on the *dev* phrasings (organic_sd/text/phrasings.py): the share read right. The share
with the best mean wins (ties keep the package default, organic_sd.ounet.prompts.READOUT_SHARE).
The unknown-prompt guard is set halfway between the dev digit phrasings' lowest cosine to their
nearest class centroid and the dev unrelated prompts' highest. Only then are the held-out phrasings
and the held-out unrelated prompts scored, with the chosen settings: that is the report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from organic_sd.files import atomic_json
from organic_sd.ounet.prompts import READOUT_SHARE, fit_prompt_adapter
from organic_sd.text.phrasings import CLASS_WORDS, DEV_UNRELATED, HELD_OUT_UNRELATED, phrasing_set


def read_right(adapter, emb: torch.Tensor, labels: list[int]) -> float:
    """Share of the embedded phrasings (P, D) whose highest class score is the class they name."""
    return float((adapter(emb).argmax(1) == torch.tensor(labels)).float().mean())


def nearest_cosine(adapter, emb: torch.Tensor) -> torch.Tensor:
    """(P,) cosine of each embedded prompt to its nearest class centroid (what the guard compares)."""
    return (emb @ adapter.centroids.T.cpu()).max(1).values


def choose(dev_scores: dict[float, list[float]], default: float = READOUT_SHARE) -> float:
    """The share with the best mean dev score; ties keep `default` when it is among them, else the first."""
    best = max(statistics.mean(v) for v in dev_scores.values())
    tied = [s for s, v in dev_scores.items() if statistics.mean(v) == best]
    return default if default in tied else tied[0]


def guard(digit_cos: torch.Tensor, unrelated_cos: torch.Tensor) -> float:
    """Halfway between the lowest digit phrasing's and the highest unrelated prompt's nearest-centroid cosine."""
    return 0.5 * (float(digit_cos.min()) + float(unrelated_cos.max()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shares", type=float, nargs="+", default=[0.9, 0.95, 0.99, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--generations", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from organic_sd.text.embed import SentenceEncoder

    enc = SentenceEncoder()
    classes = [str(k) for k in range(len(CLASS_WORDS))]
    (tp, tl), (dp, dl), (hp, hl) = (phrasing_set(s) for s in ("train", "dev", "held-out"))
    d_emb, h_emb = enc(dp), enc(hp)
    du_emb, hu_emb = enc(list(DEV_UNRELATED)), enc(list(HELD_OUT_UNRELATED))

    adapters, dev = {}, {}
    for share in args.shares:
        adapters[share] = [fit_prompt_adapter(classes, tp, tl, enc, generations=args.generations, seed=s, share=share)
                           for s in args.seeds]
        dev[share] = [read_right(a, d_emb, dl) for a in adapters[share]]
        print(f"share {share:g}: dev phrasings read right {' / '.join(f'{v:.3f}' for v in dev[share])}")
    chosen = choose(dev)
    ref = adapters[chosen][0]  # the centroids come from the training phrasings alone: the same for every fit
    dev_digit, dev_unrel = nearest_cosine(ref, d_emb), nearest_cosine(ref, du_emb)
    min_cos = guard(dev_digit, dev_unrel)
    print(f"chosen on dev: share {chosen:g}; guard {min_cos:.3f} (dev digit phrasings >= {float(dev_digit.min()):.3f}, "
          f"dev unrelated <= {float(dev_unrel.max()):.3f})")

    # the report: held-out phrasings and unrelated prompts, scored once with what dev chose
    held = [read_right(a, h_emb, hl) for a in adapters[chosen]]
    h_digit, h_unrel = nearest_cosine(ref, h_emb), nearest_cosine(ref, hu_emb)
    res = {"shares": args.shares, "seeds": args.seeds, "generations": args.generations,
           "dev_read_right": {str(k): v for k, v in dev.items()}, "chosen_share": chosen, "guard": min_cos,
           "dev_digit_min_cosine": float(dev_digit.min()), "dev_unrelated_max_cosine": float(dev_unrel.max()),
           "held_out_read_right": held, "held_out_flagged_unknown": float((h_digit < min_cos).float().mean()),
           "held_out_unrelated_flagged": float((h_unrel < min_cos).float().mean()),
           "held_out_digit_min_cosine": float(h_digit.min()), "held_out_unrelated_max_cosine": float(h_unrel.max())}
    print(f"held out (reported once): read right {' / '.join(f'{v:.3f}' for v in held)} over seeds; digit phrasings "
          f"flagged unknown {res['held_out_flagged_unknown']:.3f} (min cosine {res['held_out_digit_min_cosine']:.3f}); "
          f"unrelated prompts flagged {res['held_out_unrelated_flagged']:.3f} "
          f"(max cosine {res['held_out_unrelated_max_cosine']:.3f})")
    if args.json:
        atomic_json(Path(args.json), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
