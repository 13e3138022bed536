"""`osd export`: one O-VAE file from the encoder of one run and the decoder of another."""

from __future__ import annotations

from organic_sd.ovae.model import OVAE, read_parts


def export(encoder_run, decoder_run, out):
    """Bundle the encoder of one run and the decoder of another into one O-VAE file."""
    enc = read_parts(encoder_run)["encoder"]
    dec = read_parts(decoder_run)["decoder"]
    if enc is None:
        raise ValueError(f"{encoder_run} holds no encoder")
    if dec is None:
        raise ValueError(f"{decoder_run} holds no decoder")
    if enc.config.teacher != dec.config.teacher:
        raise ValueError(f"encoder clones {enc.config.teacher!r} but decoder {dec.config.teacher!r}")
    v = OVAE(enc, dec, meta={"encoder_run": str(encoder_run), "decoder_run": str(decoder_run)})
    v.save(out)
    return v
