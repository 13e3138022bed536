"""`osd info`: a short summary of an O-VAE or O-UNet (`--json`: everything the file holds).

The summary says what the file clones, its parts and parameters, the shapes it takes and gives, the
figures measured when it was trained and how it was trained; never training curves or run settings
(with the training machine's folder paths), which only `--json` prints.
"""

from __future__ import annotations

from dataclasses import asdict

_SKIP = {"tick", "minutes", "run", "curve", "seconds"}  # not measured figures of the model


def _num(x) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _figures(d: dict) -> str:
    """The scalar measurements of a run summary: `heldout_mse 0.479, cosine 0.617`."""
    return ", ".join(f"{k} {_num(v)}" for k, v in (d or {}).items()
                     if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool))


def _trained(t: dict) -> str:
    """How a module was trained, in one line, from its training summary."""
    if not t:
        return "not recorded"
    bits = [str(t.get("strategy", "?"))]
    if t.get("population"):
        bits.append(f"population {t['population']}")
    if t.get("generations") is not None:
        bits.append(f"{_num(t['generations'])} generations")
    if t.get("seconds") is not None:
        bits.append(f"{float(t['seconds']):.1f} s" + (f" on {t['device']}" if t.get("device") else ""))
    if t.get("n_train") is not None:
        bits.append(f"{_num(t['n_train'])} training rows")
    if t.get("val_mse") is not None:
        bits.append(f"val MSE {_num(t['val_mse'])}")
    return ", ".join(bits)


def _arch(ola: dict) -> str:
    dims = [ola.get("in_dim"), *(ola.get("hidden") or []), ola.get("out_dim")]
    return "OLA " + " -> ".join(str(d) for d in dims)


def ovae_summary(v) -> str:
    """Lines for an O-VAE (export or one-part run)."""
    m = v.meta
    f, C, S = m["downscale"], m["latent_channels"], m["image_size"]
    lines = [f"O-VAE, {v.num_parameters():,} parameters, cloning {m['teacher']}",
             f"  parts: {', '.join(v.parts())}; {C} latent channels, {f}x downscale, trained on {S}x{S} frames"]
    if m.get("label"):
        lines.insert(1, f"  label: {m['label']}")
    if v.encoder is not None:
        lines.append(f"  shapes: images (B, 3, H, W) in [-1, 1], H and W multiples of {f} -> latents (B, {C}, H/{f}, "
                     f"W/{f})" + (" [global mode: {S}x{S} images only]" if v.encoder.config.mode == "global" else ""))
    if v.decoder is not None:
        lines.append(f"  shapes: latents (B, {C}, h, w) -> images (B, 3, {f}h, {f}w) in [-1, 1]")
    for name, part in v.parts().items():
        d = part.describe()
        p = d["part"]
        if "stages" in d:  # a staged part: one line per stage
            order = "coarse to fine" if name == "decoder" else "fine to coarse"
            lines.append(f"  {name}: staged, {len(d['stages'])} stages {order}, {d['parameters']:,} parameters")
            for i, st in enumerate(d["stages"]):
                c = st["stage"]
                extra = f" + latent {c['extra_window']}x{c['extra_window']}" if c["extra_channels"] else ""
                if c.get("carry_channels"):  # files written before the carry existed have no such key
                    extra += f" + stage {i}'s {c['carry_channels']} hidden units {c['carry_window']}x{c['carry_window']}"
                d_ = c.get("down", 1)  # files written before down existed have no such key
                cells = f" of {d_}x{d_} cells" if d_ > 1 else ""
                size = f"/{d_} down" if d_ > 1 else f"x{c['up']} up"
                lines.append(f"    stage {i + 1}: {c['in_channels']}x{c['window']}x{c['window']}{extra} window{cells}, "
                             f"{_arch(st['ola'])}, {size}; trained: {_trained(st.get('training') or {})}")
            if d.get("shift"):
                sh = d["shift"]
                how = "one map" if sh["shift"]["maps"] == 1 else "two maps, a probe of the latents' source picks one"
                t = sh.get("training") or {}
                held = _figures(t.get("heldout") or {})
                lines.append(f"    global shift: per image, {sh['shift']['out_channels']} channel shifts from "
                             f"{4 * sh['shift']['in_channels'] + 3 * sh['shift']['out_channels']} global statistics "
                             f"({how}); {_trained(t)}" + (f"; held-out with it: {held}" if held else ""))
        else:
            lines.append(f"  {name}: {p['mode']}, window {p['window']}, {_arch(d['ola'])}, {d['parameters']:,} parameters")
        t = d.get("training") or {}
        if "stages" not in d:  # a staged part says it per stage
            lines.append(f"    trained: {_trained(t)}")
        if p.get("latents") not in (None, "teacher"):  # e.g. mix:RUN; the run's folder is the training machine's
            kind, _, src = str(p["latents"]).partition(":")
            lines.append(f"    trained on latents: {kind}" + (" (with an O-Encoder run's latents)" if src else ""))
        figs = _figures(t.get("run") or {})
        if figs:
            lines.append(f"    measured: {figs}")
    return "\n".join(lines)


def ounet_summary(u) -> str:
    """Lines for an O-UNet."""
    c = u.config
    shape = tuple(c.sample_shape)
    lines = [f"O-UNet, {u.num_parameters():,} parameters, samples {shape}, cloning {c.teacher}"]
    lo, hi = c.pixel_range if getattr(c, "pixel_range", None) else (None, None)
    rng = f" in [{lo}, {hi}]" if lo is not None else ""
    cond = "unconditional" if not c.cond_dim else (
        f"conditional: text adapter to {c.cond_dim} values" if u.adapter is not None else f"cond ({c.cond_dim},)")
    if getattr(c, "classes", ()):
        cond = f"class-conditional: classes {', '.join(c.classes)}" + (
            "; a prompt adapter reads text (the `text` extra)" if getattr(u, "prompts", None) is not None else "")
    lines.append(f"  shapes: x_t (B, {', '.join(map(str, shape))}){rng}, t in [0, {c.num_steps}) -> eps of the same "
                 f"shape; {cond}")
    ola = getattr(u.module, "config", None)
    arch = _arch(asdict(ola)) if ola is not None and hasattr(ola, "in_dim") else type(u.module).__name__
    lines.append(f"  module: {arch}, window {c.window}, grid {c.grid}"
                 + (f"; noise-level head, {c.head_buckets} t buckets" if c.head_buckets else ""))
    stage = getattr(u, "stage", None)
    if stage is not None:
        copies = getattr(c, "stage_copies", "both")
        lines.append(f"  coarse stage: {_arch(asdict(stage.config))} on the image pooled to {c.stage_grid}x{c.stage_grid}"
                     + ("" if copies == "both" else f" (noise-scaled copies: {copies})")
                     + f", read by the per-pixel stack through a {c.stage_window}x{c.stage_window} window")
    if getattr(c, "target", "eps") != "eps":
        lines.append(f"  predicts {c.target} (returned as eps)")
    def moved(part: str) -> str:  # what the part's keep decision measured, when its report is in the file
        rep = u.meta.get(part) or {}
        return (f"; held-out update-weighted {c.target} MSE below the split {rep['before']['heldout_mse']:.4g} -> "
                f"{rep['after']['heldout_mse']:.4g}" if rep.get("before") and rep.get("after") else "")

    low = getattr(u, "low", None)
    if low is not None:
        lines.append(f"  low-noise stack: {_arch(asdict(low.config))} for t < {c.low_split}, predicts {c.low_target}"
                     + moved("low"))
    clean = getattr(u, "clean", None)
    if clean is not None:
        lines.append(f"  clean stage: {_arch(asdict(clean.config))} on a {c.clean_window}x{c.clean_window} window of "
                     "the low-noise stack's x0" + moved("clean"))
    t = getattr(u.module, "training_summary", {}) or {}
    # a run is many ticks, each a fit continued from the last: the summary is the kept tick's, not the run's
    run = (f" (the kept tick's fit: tick {u.meta['tick']} of a run of {float(u.meta['minutes']):.1f} min)"
           if t and u.meta.get("tick") and u.meta.get("minutes") is not None else "")
    lines.append(f"  trained: {_trained(t)}{run}")
    figs = _figures(u.meta)
    if figs:
        lines.append(f"  measured: {figs}")
    head = u.meta.get("head") or {}
    if head.get("before") and head.get("after"):
        lines.append(f"  head: {_figures(head['before'])} before, {_figures(head['after'])} after "
                     f"({'kept' if head.get('kept') else 'not kept'})")
    return "\n".join(lines)
