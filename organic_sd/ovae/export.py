"""`osd export`: one O-VAE file from the encoder of one run and the decoder of another."""

from __future__ import annotations

import copy
import dataclasses

from organic_sd.ovae.model import OVAE, Part, read_parts

# where a run's settings and summaries hold folders of the machine it was trained on
PATH_KEYS = ("store", "out", "init", "latents", "training_run", "encoder_run", "decoder_run")


def _labelled(value, label: str):
    """A folder (or 'mix:FOLDER' / 'oenc:FOLDER') -> the label (keeping the mix:/oenc: prefix); else unchanged."""
    if not isinstance(value, str) or value in ("", "teacher"):
        return value
    kind, sep, _ = value.partition(":")
    return f"{kind}:{label}" if sep and kind in ("mix", "oenc") else label


def _scrub(x, label: str):
    """A copy of a run summary with every PATH_KEYS value replaced by the label."""
    if isinstance(x, dict):
        return {k: _labelled(v, label) if k in PATH_KEYS else _scrub(v, label) for k, v in x.items()}
    if isinstance(x, list):
        return [_scrub(v, label) for v in x]
    return x


def _without_paths(part: Part, label: str) -> Part:
    module = copy.deepcopy(part.module)
    module.training_summary = _scrub(getattr(module, "training_summary", {}) or {}, label)
    return Part(dataclasses.replace(part.config, latents=_labelled(part.config.latents, label)), module)


def export(encoder_run, decoder_run, out, label: str | None = None):
    """Bundle the encoder of one run and the decoder of another into one O-VAE file.

    Without `label` the file records the two run folders as given (as before). With `label` (e.g. a
    release name) no folder of this machine is stored: the run folders, and the store, output, init and
    latents folders in the parts' training summaries, are replaced by the label.
    """
    enc = read_parts(encoder_run)["encoder"]
    dec = read_parts(decoder_run)["decoder"]
    if enc is None:
        raise ValueError(f"{encoder_run} holds no encoder")
    if dec is None:
        raise ValueError(f"{decoder_run} holds no decoder")
    if enc.config.teacher != dec.config.teacher:
        raise ValueError(f"encoder clones {enc.config.teacher!r} but decoder {dec.config.teacher!r}")
    if label is None:
        meta = {"encoder_run": str(encoder_run), "decoder_run": str(decoder_run)}
    else:
        if not label.strip():
            raise ValueError("--label must not be empty")
        enc, dec = _without_paths(enc, label), _without_paths(dec, label)
        meta = {"label": label}
    v = OVAE(enc, dec, meta=meta)
    v.save(out)
    return v
