"""The `osd` command line: one subcommand per step of the data flow.

Each subcommand lives in a `_cmd_*` function that imports its module lazily, so that
`osd --help` starts fast and optional extras are only needed by the commands that use them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from organic_sd import strategy_names
from organic_sd.flags import add_flags, from_args
from organic_sd.ounet.config import DenoiserTrainConfig
from organic_sd.ovae.config import DECODER_ONLY, TrainConfig


def _cmd_info(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from organic_sd import ola
    from organic_sd.files import read_safetensors
    from organic_sd.ounet import model as ounet
    from organic_sd.ovae import model as ovae

    if args.checkpoint in ounet.SHIPPED and not Path(args.checkpoint).exists():  # a shipped O-UNet by name
        args.checkpoint = str(ounet.SHIPPED[args.checkpoint])
    # dispatch on the file's own format, so a broken O-VAE or O-UNet reports its own error
    _, _, meta = read_safetensors(args.checkpoint, "organic_sd checkpoint")
    from organic_sd.info import ounet_summary, ovae_summary

    if meta.get("format") == ovae.FORMAT:  # an O-VAE export or `osd train` encoder/decoder run
        v = ovae.OVAE.load(args.checkpoint)
        if not args.json:  # a short summary; --json: everything, training curves and run settings included
            print(ovae_summary(v))
            return 0
        print(f"O-VAE, {v.num_parameters():,} parameters")
        print(json.dumps(v.meta, indent=2, default=str))
    elif meta.get("format") == ounet.FORMAT:
        u = ounet.OUNet.load(args.checkpoint)
        if not args.json:
            print(ounet_summary(u))
            return 0
        print(f"O-UNet, {u.num_parameters():,} parameters, samples {tuple(u.sample_shape)}")
        print(json.dumps({"config": asdict(u.config), "meta": u.meta,
                          "training": u.module.training_summary}, indent=2, default=str))
    else:  # a bare OLA module, or its error
        print(ola.load(args.checkpoint).describe())
    return 0


def _cmd_precompute(args: argparse.Namespace) -> int:
    from organic_sd import dist
    from organic_sd.data.precompute import precompute
    from organic_sd.devices import resolve_device

    device = str(resolve_device(args.device))  # before loading anything: no CUDA is a clear error
    dist.init()  # under torchrun: join the group; otherwise nothing changes
    device = dist.local_device(device)
    from organic_sd.teachers import load_teacher

    teacher = load_teacher(args.teacher, device=device)
    rep = precompute(
        args.sources, teacher, args.out, args.size, stride=args.stride, start=args.start,
        max_frames=args.max_frames, batch=args.batch, val_fraction=args.val_fraction, shard_size=args.shard_size,
        n_views=args.views,
    )
    if dist.is_main():
        print(rep.summary())
    dist.destroy()
    return 130 if rep.interrupted else 0


def _cmd_store_resplit(args: argparse.Namespace) -> int:
    from organic_sd.data.split import resplit, split_line

    meta = resplit(args.store, args.val_fraction)
    print(f"{args.store}: {split_line(meta)}")
    return 0


def _add_store_parser(sub) -> None:
    """`osd store resplit`: redraw a store's held-out split from its keys, without running the teacher again."""
    st = sub.add_parser("store", help="work on a written store (resplit)")
    ops = st.add_subparsers(dest="store_op", required=True)
    rs = ops.add_parser("resplit", help="redraw a frames store's train/held-out split (no teacher run)",
                        description="redraw a frames store's train/held-out split from its keys: the teacher is not "
                                    "run again; at least one photo or video chunk is held out when there are two")
    rs.add_argument("store", help="store folder written by `osd precompute frames`")
    rs.add_argument("--val-fraction", type=float, required=True, help="held-out share of photos and video chunks")
    rs.set_defaults(func=_cmd_store_resplit)


# -- O-VAE: train, eval, reconstruct, demo, export (organic_sd.ovae) ---------------------------

def _cmd_train(args: argparse.Namespace) -> int:
    from organic_sd import dist
    from organic_sd.devices import resolve_device
    from organic_sd.ovae.train import train

    device = str(resolve_device(args.device))  # before joining a group: no CUDA is a clear error
    dist.init()  # under torchrun: join the group, and ola.fit splits its searches across the ranks
    cfg = from_args(TrainConfig, args, kind=args.part, device=dist.local_device(device),
                    progress=_progress(args.progress))
    res = train(cfg)
    dist.destroy()
    return _train_exit(res)


def _progress(flag: bool | None) -> bool:
    """--progress / --no-progress as given; neither: progress bars when someone watches (stderr is a terminal)."""
    return sys.stderr.isatty() if flag is None else flag


def _train_exit(res: dict) -> int:
    """A training run's exit status: 130 after Ctrl-C, 2 when it learned nothing (runs.run_ticks said why), else 0."""
    return {"interrupted": 130, "no-result": 2}.get(res["status"], 0)


def _load_ovae(spec: str | None, device: str = "cpu"):
    from organic_sd.ovae import OVAE

    return OVAE.load(spec, device=device)


def _cmd_eval_latents(args: argparse.Namespace) -> int:
    from organic_sd.ovae.latent_eval import latents

    v = _load_ovae(args.ovae, args.device)
    res = latents(v, args.store, args.out, split=args.split, max_images=args.max_images)
    print(f"{res['images']} {res['split']} images, {res['positions']:,} latent positions: L2 {res['l2']:.5f}, "
          f"mean cosine {res['cosine']:.4f} (median {res['cosine_median']:.4f}), mean R² {res['r2_mean']:.4f}")
    if args.out:
        print(f"wrote {args.out}/latents.json and latents.png")
    return 0


def _cmd_eval_pipeline(args: argparse.Namespace) -> int:
    from organic_sd.ovae.evaluate import pipeline, print_report

    v = _load_ovae(args.ovae, args.device)
    teacher = None
    if args.teacher:
        from organic_sd.teachers import load_teacher

        teacher = load_teacher(args.teacher, device=args.device)
    rep = pipeline(args.images, v, args.out, teacher=teacher, size=args.size, max_images=args.max_images)
    print_report(rep, args.out)
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from organic_sd.ovae.evaluate import check_size, reconstruct

    check_size(args.size)  # an odd --size is said as such, before the O-VAE or the image is read
    v = _load_ovae(args.ovae, args.device)
    path, m = reconstruct(args.image, v, args.out, size=args.size)
    against = "the input" if args.size is None else f"the input's centre square at {args.size}x{args.size}"
    print(f"wrote {path} (PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} against {against})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    from organic_sd.ovae.demo import demo
    from organic_sd.ovae.evaluate import print_report

    teacher = args.teacher or os.environ.get("OSD_TEACHER") or None
    rep = demo(args.out, teacher, seconds=args.seconds, device=args.device, images=args.images)
    print_report(rep, args.out if teacher is None else f"{args.out}/eval")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from organic_sd.ovae.export import export

    v = export(args.encoder, args.decoder, args.out, label=args.label)
    print(f"wrote {args.out}: O-VAE cloning {v.meta['teacher']}, {v.num_parameters():,} parameters")
    return 0


def _cmd_export_or_onnx(args: argparse.Namespace) -> int:
    """`osd export`: a bundle of two runs, or with --onnx one part as an ONNX graph (organic_sd.ovae.onnx)."""
    if args.onnx:
        from organic_sd.ovae.onnx import run_cli

        return run_cli(args)
    if not (args.encoder and args.decoder and args.out):
        raise ValueError("osd export needs --encoder RUN --decoder RUN --out FILE (or --onnx FILE --part PART)")
    return _cmd_export(args)


def _add_ovae_parsers(sub) -> None:
    """`osd train`, `osd eval`, `osd reconstruct`, `osd demo`, `osd export`."""
    tr = sub.add_parser("train", help="evolve an O-VAE part (encoder, decoder) or the O-UNet denoiser (denoiser, "
                                      "denoiser-head, denoiser-low, denoiser-clean) from a store (no gradients)")
    parts = tr.add_subparsers(dest="part", required=True)
    dec = parts.add_parser("decoder", help="O-Decoder: latent window -> pixel block")
    add_flags(dec, TrainConfig, skip=("kind",))
    enc = parts.add_parser("encoder", help="O-Encoder: pixel window -> latent vector")
    add_flags(enc, TrainConfig, skip=("kind", *DECODER_ONLY))
    tr.set_defaults(func=_cmd_train)
    _add_train_denoiser_parser(parts)
    _add_train_prompts_parser(parts)
    _add_train_head_parser(parts)
    _add_train_low_parser(parts)
    _add_train_clean_parser(parts)

    ev = sub.add_parser("eval", help="evaluate an O-VAE (latents, pipeline) or an O-UNet (denoiser)")
    evs = ev.add_subparsers(dest="what", required=True)
    el = evs.add_parser("latents", help="O-Encoder vs teacher latents on a store's held-out split")
    el.add_argument("--ovae", required=True, help="O-VAE file, export or encoder run folder")
    el.add_argument("--store", required=True)
    el.add_argument("--out", default=None, help="folder for latents.json and latents.png")
    el.add_argument("--split", choices=("val", "train", "all"), default="val")
    el.add_argument("--max-images", type=int, default=None)
    el.add_argument("--device", default="cpu")
    el.set_defaults(func=_cmd_eval_latents)
    ep = evs.add_parser("pipeline", help="original / teacher recon / O-VAE recon pictures and metrics")
    ep.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="images, folders or sample:skimage ...")
    ep.add_argument("--ovae", default=None, help="O-VAE file (default: the shipped one)")
    ep.add_argument("--teacher", default=None, help="teacher spec, for teacher recon and O-Decoder-on-teacher metrics")
    ep.add_argument("--out", required=True, help="output folder")
    ep.add_argument("--size", type=int, default=None, help="frame side (default: the O-VAE's training size)")
    ep.add_argument("--max-images", type=int, default=None)
    ep.add_argument("--device", default="cpu")
    ep.set_defaults(func=_cmd_eval_pipeline)

    def _cmd_eval_denoiser(args: argparse.Namespace) -> int:  # beside its parser: the O-UNet's eval in one block
        from organic_sd.ounet.evaluate import run_cli

        return run_cli(args)

    ed = evs.add_parser("denoiser", help="O-UNet vs its denoiser teacher: eps error, few-step DDIM PSNR, CPU speed")
    ed.add_argument("--ounet", required=True, help="O-UNet file or `osd train denoiser` run folder")
    ed.add_argument("--teacher", required=True, help="the denoiser teacher it clones, e.g. ddpm-mnist")
    ed.add_argument("--out", required=True, help="folder for report.json, report.md and samples.png")
    ed.add_argument("--n", type=int, default=64, help="samples for the eps error and the DDIM comparison")
    ed.add_argument("--seed", type=int, default=999, help="noise seed (eps samples: SEED, DDIM comparison: SEED+1, distribution: SEED+2)")
    ed.add_argument("--steps", type=int, nargs="+", default=[4, 8, 20], help="DDIM step counts")
    ed.add_argument("--t", dest="ts", type=int, nargs="+", default=[10, 50, 100, 250, 500],
                    help="timesteps of the eps error")
    ed.add_argument("--threads", type=int, default=1, help="torch threads for the CPU timing")
    ed.add_argument("--samples", type=int, default=2000,
                    help="samples per set for KID / precision / recall against the teacher's 50-step samples "
                         "(noise seed SEED+2; 0: skip; 2000 took 17 min on 2 busy CPU cores)")
    ed.add_argument("--samples-steps", dest="sample_steps", type=int, default=8,
                    help="DDIM steps of the teacher's and the O-UNet's sets scored by those metrics")
    ed.add_argument("--last-t", dest="last_t", type=int, default=None,
                    help="last step of every few-step DDIM schedule, clone's and teacher's alike (default: "
                         "1000 / steps, e.g. 125 for 8 steps)")
    ed.add_argument("--device", default="cpu", help="where sampling runs (timing is always on the CPU)")
    ed.set_defaults(func=_cmd_eval_denoiser)

    rc = sub.add_parser("reconstruct", help="O-VAE round trip of one image (no teacher needed)")
    rc.add_argument("image")
    rc.add_argument("--ovae", default=None, help="O-VAE file (default: the shipped one)")
    rc.add_argument("--out", default=None, help="output PNG (default: IMAGE_ovae.png in the current folder)")
    rc.add_argument("--size", type=int, default=None,
                    help="reconstruct the centre square resized to SIZE x SIZE, a multiple of 8 (default: the "
                         "whole image at its own size)")
    rc.add_argument("--device", default="cpu")
    rc.set_defaults(func=_cmd_reconstruct)

    dm = sub.add_parser("demo", help="the whole loop on built-in samples; prints where the pictures are")
    dm.add_argument("--teacher", default=None, help="teacher spec (or OSD_TEACHER): precompute + train + eval")
    dm.add_argument("--out", default="osd-demo", help="output folder")
    dm.add_argument("--seconds", type=float, default=20.0, help="training time per part (with a teacher)")
    dm.add_argument("--images", type=int, default=6, help="sample photos to evaluate on")
    dm.add_argument("--device", default="cpu")
    dm.set_defaults(func=_cmd_demo)

    ex = sub.add_parser("export", help="bundle an encoder run and a decoder run into one O-VAE file, or write "
                                       "one part as an ONNX graph (--onnx)")
    ex.add_argument("--encoder", default=None, help="encoder run folder or file")
    ex.add_argument("--decoder", default=None, help="decoder run folder or file")
    ex.add_argument("--out", default=None, help="output .safetensors file")
    ex.add_argument("--label", default=None,
                    help="store this label (e.g. a release name) instead of this machine's run, store and init "
                         "folders")
    ex.add_argument("--onnx", metavar="FILE", default=None,
                    help="write --part of --ovae as an ONNX graph (dynamic height/width; needs the onnx extra)")
    ex.add_argument("--part", choices=("decoder", "encoder"), default="decoder", help="with --onnx: which part")
    ex.add_argument("--ovae", default=None, help="with --onnx: O-VAE file or run (default: the shipped one)")
    ex.set_defaults(func=_cmd_export_or_onnx)


def _cmd_precompute_denoiser(args: argparse.Namespace) -> int:
    from organic_sd.data.denoiser_precompute import precompute_denoiser, read_prompts
    from organic_sd.devices import resolve_device

    device = str(resolve_device(args.device))  # before loading anything: no CUDA is a clear error
    prompts = read_prompts(args.prompts) if args.prompts else None
    from organic_sd.teachers import load_denoiser

    teacher = load_denoiser(args.teacher, device=device)
    rep = precompute_denoiser(
        teacher, args.out, args.samples, steps=args.steps, renoise=args.renoise, prompts=prompts,
        batch=args.batch, seed=args.seed, val_fraction=args.val_fraction, shard_size=args.shard_size,
        progress=_progress(args.progress),
    )
    print(rep.summary())
    return 130 if rep.interrupted else 0


def _add_precompute_denoiser_parser(kinds) -> None:
    """`osd precompute denoiser`: DDIM trajectories of a denoiser teacher into a denoiser store."""
    p = kinds.add_parser(
        "denoiser", help="run a denoiser teacher's DDIM sampler into a store of (x_t, t, cond, eps)",
        description="run a denoiser teacher's DDIM sampler from seeded noise into a store of (x_t, t, cond, eps): "
                    "every step of its trajectories plus re-noised copies of its final samples (resumable)")
    p.add_argument("--teacher", required=True,
                   help="ddpm-mnist[:PATH], dit-mnist-cond[:PATH] (class-conditional), or a Stable Diffusion "
                        "pipeline folder / hub id")
    p.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    p.add_argument("--prompts", default=None,
                   help="text file, one prompt per line (sample i uses prompt i mod P); for a class-conditional "
                        "teacher class names ('0'..'9'), by default every class, balanced")
    p.add_argument("--samples", type=int, default=256, help="trajectories in the store (raise it to add more)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per trajectory (one record each)")
    p.add_argument("--renoise", type=int, default=4, help="re-noised copies of each final sample at random t")
    p.add_argument("--batch", type=int, default=16, help="samples per teacher call")
    p.add_argument("--seed", type=int, default=0, help="noise seed (with the sample number)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="held-out share of samples, fixed at write time")
    p.add_argument("--shard-size", type=int, default=4096, help="records per shard file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on when stderr is a terminal)")
    p.set_defaults(func=_cmd_precompute_denoiser)


def _cmd_precompute_states(args: argparse.Namespace) -> int:
    from organic_sd.data.student_states import add_student_states
    from organic_sd.devices import resolve_device
    from organic_sd.ounet import OUNet
    from organic_sd.teachers import load_denoiser

    device = str(resolve_device(args.device))
    teacher = load_denoiser(args.teacher, device=device)
    student = OUNet.load(args.ounet, device=device)
    rep = add_student_states(teacher, student, args.store, args.samples, steps=args.steps, batch=args.batch,
                             seed=args.seed, student_id=str(args.ounet))
    print(rep.summary())
    return 130 if rep.interrupted else 0


def _add_precompute_states_parser(kinds) -> None:
    """`osd precompute clone-states`: an O-UNet's own DDIM paths, labelled by its teacher, into its store."""
    p = kinds.add_parser(
        "clone-states", help="add the states an O-UNet visits on its own DDIM path, labelled by the teacher, to a "
                             "denoiser store (so a refit learns to recover from its own errors)",
        description="run an O-UNet's DDIM sampler from seeded noise and append every state it visits, with the "
                    "teacher's eps there, to the teacher's denoiser store (resumable; keys SSSSSSSS/sKKKK)")
    p.add_argument("--teacher", required=True, help="the teacher that wrote the store (ddpm-mnist[:PATH], ...)")
    p.add_argument("--ounet", required=True, help="the O-UNet whose paths are recorded (file, run or shipped name)")
    p.add_argument("--store", required=True, help="denoiser store written by `osd precompute denoiser`")
    p.add_argument("--samples", type=int, default=4096, help="paths recorded (raise it to add more)")
    p.add_argument("--steps", type=int, default=8, help="DDIM steps of each path (the step count users sample with)")
    p.add_argument("--batch", type=int, default=256, help="paths per call")
    p.add_argument("--seed", type=int, default=0, help="noise seed (with the sample number)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.set_defaults(func=_cmd_precompute_states)


# -- O-UNet: train denoiser, generate (organic_sd.ounet) ---------------------------------------

def _cmd_train_denoiser(args: argparse.Namespace) -> int:
    from organic_sd.ounet.train import train

    cfg = from_args(DenoiserTrainConfig, args, progress=_progress(args.progress))
    return _train_exit(train(cfg))


def _cmd_train_head(args: argparse.Namespace) -> int:
    from organic_sd.data.denoiser_store import DenoiserStore
    from organic_sd.ounet import OUNet
    from organic_sd.ounet.train_head import fit_head

    u = OUNet.load(args.ounet)
    store = DenoiserStore.open(args.store)
    u2, rep = fit_head(u, store, buckets=args.buckets, max_seconds=60.0 * args.max_minutes, max_rows=args.max_rows,
                       eval_records=args.eval_records, strategy=args.strategy, population=args.population,
                       device=args.device, seed=args.seed)
    path = u2.to("cpu").save(Path(args.out))
    print(f"wrote {path} ({u2.num_parameters():,} parameters{'' if rep['kept'] else ', without a head'})")
    return 0


def _fit_resumable(args: argparse.Namespace, what: str, tag: str, fit) -> int:
    """Run fit(u, store, init) -> (u2, report) for one part evolved on a trained O-UNet: Ctrl-C keeps the units
    grown so far beside --out (`tag`-partial), and the same command goes on from them."""
    from organic_sd import ola
    from organic_sd.data.denoiser_store import DenoiserStore
    from organic_sd.ounet import OUNet

    u = OUNet.load(args.ounet)
    store = DenoiserStore.open(args.store)
    out = Path(args.out)
    partial = out.with_name(f"{out.stem}.{tag}-partial.safetensors") if out.suffix == ".safetensors" \
        else out / f"{tag}-partial.safetensors"
    init = None
    if partial.is_file():
        init = ola.load(partial, args.device)
        print(f"continuing the interrupted {what} in {partial} ({init.config.hidden} units grown)")
    try:
        u2, rep = fit(u, store, init)
    except ola.FitInterrupted as e:
        partial.parent.mkdir(parents=True, exist_ok=True)
        e.module.save(partial)
        print(f"interrupted: the units grown so far are in {partial}; the same command goes on from there",
              file=sys.stderr)
        return 130
    path = u2.to("cpu").save(out)
    partial.unlink(missing_ok=True)
    print(f"wrote {path} ({u2.num_parameters():,} parameters{'' if rep['kept'] else ', without a ' + what})")
    return 0


def _cmd_train_low(args: argparse.Namespace) -> int:
    from organic_sd.ounet.low import fit_low

    return _fit_resumable(args, "low-noise stack", "low", lambda u, store, init: fit_low(
        u, store, split=args.split, target=args.target, hidden=args.hidden, max_seconds=60.0 * args.max_minutes,
        max_rows=args.max_rows, eval_records=args.eval_records, population=args.population, device=args.device,
        seed=args.seed, init=init, progress=_progress(args.progress), prune=args.prune, refine=args.refine,
        refine_start=args.refine_start))


def _cmd_train_clean(args: argparse.Namespace) -> int:
    from organic_sd.ounet.train_clean import fit_clean

    return _fit_resumable(args, "clean stage", "clean", lambda u, store, init: fit_clean(
        u, store, window=args.window, hidden=args.hidden, max_seconds=60.0 * args.max_minutes,
        max_rows=args.max_rows, eval_records=args.eval_records, population=args.population, device=args.device,
        seed=args.seed, init=init, progress=_progress(args.progress), refine=args.refine,
        refine_start=args.refine_start))


def _add_below_split_fit_args(p, max_minutes: float) -> None:
    """The budget, keep-decision and run flags of a part evolved below the split on a trained O-UNet."""
    p.add_argument("--max-minutes", type=float, default=max_minutes)
    p.add_argument("--max-rows", type=int, default=600_000, help="pixel rows it is evolved on")
    p.add_argument("--eval-records", type=int, default=512, help="held-out records below the split that decide "
                                                                 "whether it is kept")
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--refine", type=float, default=0.0, help="share of the search spent moving the grown units "
                                                             "together afterwards (ola.Refine; 0: off)")
    p.add_argument("--refine-start", choices=("cascade", "random"), default="cascade",
                   help="where a fresh part's units start: grown by the cascade, or random (one hidden layer; needs "
                        "--refine, e.g. 0.9; ola.Refine.measured, docs/BENCHMARKS.md)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: on when stderr is a terminal)")


def _add_train_clean_parser(parts) -> None:
    """`osd train denoiser-clean`: a map over the low-noise stack's x0, evolved on a trained O-UNet."""
    cl = parts.add_parser("denoiser-clean", help="O-UNet: evolve a clean stage that redraws the low-noise stack's x0 "
                                                 "from a wider window of it")
    cl.add_argument("--ounet", required=True, help="O-UNet with a low-noise stack (file, run or shipped name)")
    cl.add_argument("--store", required=True, help="denoiser store of the same teacher")
    cl.add_argument("--out", required=True, help="where the O-UNet with its clean stage is written "
                                                 "(.safetensors or folder)")
    cl.add_argument("--window", type=int, default=5, help="odd width of the window of the low stack's x0 it reads")
    cl.add_argument("--hidden", type=int, nargs="+", default=[16], help="hidden widths")
    _add_below_split_fit_args(cl, max_minutes=3.0)
    cl.set_defaults(func=_cmd_train_clean)


def _add_train_low_parser(parts) -> None:
    """`osd train denoiser-low`: a second per-pixel stack for the last steps, evolved on a trained O-UNet."""
    lo = parts.add_parser("denoiser-low", help="O-UNet: evolve a low-noise stack (steps t < --split, x0 by default)")
    lo.add_argument("--ounet", required=True, help="trained O-UNet (file, `osd train denoiser` run or shipped name)")
    lo.add_argument("--store", required=True, help="denoiser store of the same teacher")
    lo.add_argument("--out", required=True, help="where the O-UNet with its low-noise stack is written "
                                                 "(.safetensors or folder)")
    lo.add_argument("--split", type=int, default=400, help="the stack takes the steps t < SPLIT")
    lo.add_argument("--target", default="x0", choices=("eps", "x0", "v"), help="what it predicts")
    lo.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths (default: the O-UNet's)")
    lo.add_argument("--prune", type=int, default=None, metavar="N",
                    help="instead of growing a new stack, cut the O-UNet's own low stack to its N most used units and "
                         "re-evolve its readout (a cheaper step; pairs with `osd train denoiser-clean`)")
    _add_below_split_fit_args(lo, max_minutes=5.0)
    lo.set_defaults(func=_cmd_train_low)


def _add_train_head_parser(parts) -> None:
    """`osd train denoiser-head`: a noise-level head evolved on a trained O-UNet's residual."""
    hd = parts.add_parser("denoiser-head", help="O-UNet: evolve a per-t-bucket linear correction on its residual")
    hd.add_argument("--ounet", required=True, help="trained O-UNet (file or `osd train denoiser` run)")
    hd.add_argument("--store", required=True, help="denoiser store of the same teacher")
    hd.add_argument("--out", required=True, help="where the O-UNet with its head is written (.safetensors or folder)")
    hd.add_argument("--buckets", type=int, default=8, help="t buckets, equal shares of the schedule")
    hd.add_argument("--max-minutes", type=float, default=5.0)
    hd.add_argument("--max-rows", type=int, default=200_000, help="pixel rows the head is evolved on")
    hd.add_argument("--eval-records", type=int, default=256, help="held-out records that decide whether it is kept")
    hd.add_argument("--strategy", default="auto", choices=strategy_names.CHOICES, help=strategy_names.HELP)
    hd.add_argument("--population", type=int, default=40)
    hd.add_argument("--device", default="cpu")
    hd.add_argument("--seed", type=int, default=0)
    hd.set_defaults(func=_cmd_train_head)


def _cmd_train_prompts(args: argparse.Namespace) -> int:
    from organic_sd.ounet import OUNet
    from organic_sd.ounet.prompts import fit_prompt_adapter
    from organic_sd.text.embed import SentenceEncoder
    from organic_sd.text.phrasings import phrasing_set

    u = OUNet.load(args.ounet)
    if not u.config.classes:
        raise ValueError(f"{args.ounet} is not class-conditional: a prompt adapter maps text to one of its classes")
    enc = SentenceEncoder()
    prompts, labels = phrasing_set("train")
    adapter = fit_prompt_adapter(u.config.classes, prompts, labels, enc, generations=args.generations, seed=args.seed)
    held, held_labels = phrasing_set("held-out")
    got = [c for c, _, _ in adapter.classify(held)]
    right = sum(int(a == b) for a, b in zip(got, held_labels))
    u.prompts = adapter
    path = u.save(Path(args.out))
    print(f"wrote {path}: prompt adapter fitted on {len(prompts)} phrasings; held-out phrasings read as the class "
          f"asked for: {right} / {len(held)}")
    return 0


def _add_train_prompts_parser(parts) -> None:
    """`osd train prompts`: text -> class for a class-conditional O-UNet (needs the `text` extra)."""
    tp = parts.add_parser("prompts", help="class-conditional O-UNet: evolve its prompt adapter (text -> class)")
    tp.add_argument("--ounet", required=True, help="class-conditional O-UNet (file, run folder or shipped name)")
    tp.add_argument("--out", required=True, help="where the O-UNet with its prompt adapter is written")
    tp.add_argument("--generations", type=int, default=300, help="search generations (reproducible)")
    tp.add_argument("--seed", type=int, default=0)
    tp.set_defaults(func=_cmd_train_prompts)


def _add_train_denoiser_parser(parts) -> None:
    """`osd train denoiser`: its own flags (the O-VAE parts' flags do not apply)."""
    dn = parts.add_parser("denoiser", help="O-UNet: noisy window + timestep + global context -> eps per pixel")
    add_flags(dn, DenoiserTrainConfig)
    dn.set_defaults(func=_cmd_train_denoiser)


def _cmd_generate(args: argparse.Namespace) -> int:
    from organic_sd.ounet import OUNet
    from organic_sd.ounet.generate import generate

    u = OUNet.load(args.ounet, device=args.device)
    if u.config.classes:
        return _generate_class(args, u)
    if args.cls is not None or args.guidance != 1.0:
        raise ValueError("--class and --guidance: this O-UNet is not class-conditional")
    if args.prompt is not None and u.adapter is None:
        raise ValueError("this O-UNet is unconditional (no text adapter): leave PROMPT out, or train one on a store "
                         "with prompts (`osd precompute denoiser --prompts FILE`, then `osd train denoiser`)")
    if u.adapter is not None and not args.teacher:
        raise ValueError("this O-UNet is conditional: give --teacher (the pipeline whose text encoder embeds the "
                         "prompt) and a PROMPT (none: the empty prompt)")
    teacher = cond = None
    if args.teacher:
        from organic_sd.teachers import load_denoiser

        teacher = load_denoiser(args.teacher, device=args.device)
        if u.adapter is not None:
            if teacher.id != u.config.teacher:
                print(f"warning: the O-UNet was trained on {u.config.teacher}, the text encoder is {teacher.id}'s",
                      file=sys.stderr)
            cond = teacher.encode_text([args.prompt or ""])  # (1, L, D)
    decode = _latent_decoder(args.vae, u, teacher, args.device)
    preview = None
    if args.preview:
        from organic_sd.previews import preview_for_generate

        preview = preview_for_generate(args.preview, u, decode)
    res = generate(u, args.out, steps=args.steps, seed=args.seed, n=args.n, teacher=teacher, cond=cond,
                   decode=decode, preview=preview)
    print(f"wrote {args.out}: {args.n} samples, {args.steps} DDIM steps of the O-UNet, seed {args.seed}"
          + (f", prompt {args.prompt or ''!r}" if cond is not None else "")
          + (" (left), the teacher's from the same noise (right)" if teacher is not None else ""))
    if preview is not None:
        print(f"wrote {args.preview}: the O-UNet's x0 estimate at each of the {args.steps} steps")
    if teacher is not None:
        print(f"PSNR O-UNet vs teacher: {res['psnr']:.2f} dB")
    return 0


def _generate_class(args: argparse.Namespace, u) -> int:
    """`osd generate` for a class-conditional O-UNet: the class from --class or from PROMPT (prompt adapter)."""
    import warnings

    from organic_sd.ounet.generate import generate

    names = u.config.classes
    if (args.cls is None) == (args.prompt is None):
        raise ValueError(f"this O-UNet draws the class asked for: give --class ({', '.join(names)}) or a PROMPT")
    if args.prompt is not None:
        if u.prompts is None:
            raise ValueError("this O-UNet has no prompt adapter (`osd train prompts`): use --class")
        k, _, known = u.prompts.classify([args.prompt])[0]
        if not known:
            warnings.warn(f"the prompt {args.prompt!r} asks for no class this O-UNet knows (it is far from every "
                          f"class's phrasings); drawing the nearest, {names[k]!r}", stacklevel=1)
    elif args.cls not in names:
        raise ValueError(f"--class {args.cls!r}: this O-UNet's classes are {', '.join(names)}")
    else:
        k = names.index(args.cls)
    teacher = None
    if args.teacher:
        from organic_sd.teachers import load_denoiser

        teacher = load_denoiser(args.teacher, device=args.device)
    # the teacher beside draws the class's one-hot row: guidance is the clone's own knob
    res = generate(u, args.out, steps=args.steps, seed=args.seed, n=args.n, teacher=teacher,
                   cond=u.class_rows([k], 1, args.guidance), teacher_cond=u.class_cond([k], 1))
    print(f"wrote {args.out}: {args.n} samples of class {names[k]!r}"
          + (f" (prompt {args.prompt!r})" if args.prompt is not None else "")
          + f", {args.steps} DDIM steps of the O-UNet, seed {args.seed}"
          + (f", guidance {args.guidance:g}" if args.guidance != 1.0 else "")
          + (" (left), the teacher's from the same noise (right)" if teacher is not None else ""))
    if teacher is not None:
        print(f"PSNR O-UNet vs teacher: {res['psnr']:.2f} dB")
    return 0


def _latent_decoder(spec: str | None, u, teacher, device: str):
    """--vae: None; 'teacher' (the SD pipeline's own VAE); or an O-VAE file/run or VAE teacher spec -> decode()."""
    if spec is None:
        return None
    if spec == "teacher":
        vae = getattr(teacher, "vae_spec", None)
        if vae is None:
            raise ValueError("--vae teacher: " + ("give --teacher" if teacher is None else
                                                  f"the teacher {teacher.id} has no VAE (no vae/ in its folder)"))
        spec = vae
    from organic_sd.ovae.model import OVAE

    try:
        dec = OVAE.load(spec, device=device)
    except (ValueError, FileNotFoundError):
        from organic_sd.teachers import load_teacher

        dec = load_teacher(spec, device=device)
    return dec.decode


def _add_generate_parser(sub) -> None:
    """`osd generate`."""
    g = sub.add_parser("generate", help="deterministic DDIM samples from an O-UNet into a grid PNG")
    g.add_argument("prompt", nargs="?", default=None,
                   help="text prompt (conditional O-UNets only; a class-conditional one reads it with its prompt "
                        "adapter, which needs the `text` extra)")
    g.add_argument("--class", dest="cls", default=None,
                   help="the class to draw, by name (a class-conditional O-UNet such as --ounet mnist-cond: 0..9)")
    g.add_argument("--guidance", type=float, default=1.0,
                   help="class-conditional O-UNets: move the class row this many times as far from the all-classes "
                        "mean (1: as trained; 2: the class asked for far more often, bolder strokes, further from the "
                        "teacher's shapes: docs/BENCHMARKS.md)")
    g.add_argument("--ounet", default=None, help="O-UNet file or `osd train denoiser` run (default: the shipped one)")
    g.add_argument("--steps", type=int, default=8, help="DDIM steps")
    g.add_argument("--seed", type=int, default=0, help="noise seed")
    g.add_argument("--n", type=int, default=16, help="number of samples")
    g.add_argument("--teacher", default=None,
                   help="denoiser teacher spec: its samples from the same noise beside; for a conditional O-UNet, "
                        "its text encoder embeds the prompt")
    g.add_argument("--vae", default=None,
                   help="latent teachers: decode the samples with 'teacher' (the pipeline's VAE), an O-VAE file or "
                        "run, or a VAE teacher spec (default: draw the latents' first 3 channels)")
    g.add_argument("--out", required=True, help="output PNG")
    g.add_argument("--preview", default=None, metavar="GIF_OR_FOLDER",
                   help="write the O-UNet's x0 estimate at every step: an animated GIF (a .gif path) or one PNG per "
                        "step (a folder), decoded by --vae for latent teachers")
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=_cmd_generate)


class _HelpWithDefaults(argparse.HelpFormatter):
    """--help lines end with "(default: X)" where a flag has a default its help does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or action.default == [] or "default" in text or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every `osd` parser, subcommands included (add_subparsers builds them of the parent's class)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `osd`."""
    from organic_sd import __version__

    p = _Parser(prog="osd", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"osd (organic-sd) {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a saved OLA module or checkpoint")
    info.add_argument("checkpoint", help="folder or .safetensors file saved by organic_sd")
    info.add_argument("--json", action="store_true",
                      help="print everything the file holds (training curves, run settings) as JSON")
    info.set_defaults(func=_cmd_info)

    pre = sub.add_parser("precompute", help="run a teacher into a store: `frames` (VAE teachers over images and "
                                            "video) or `denoiser` (a denoiser's DDIM trajectories)")
    kinds = pre.add_subparsers(dest="store_kind", required=True)
    pre = kinds.add_parser("frames", help="run a VAE teacher over frames into a store of (frame, latent, decode)",
                           description="run a VAE teacher over images and video frames into a store of "
                                       "(frame, latent, decode) (resumable)")
    pre.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="video file, image file, image folder (recursive), or sample:videos / sample:skimage / "
                          "sample:bigbuckbunny ...")
    pre.add_argument("--teacher", required=True, help="teacher spec, e.g. a taef2 folder or a diffusers VAE")
    pre.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    pre.add_argument("--size", type=int, default=256, help="frame side in pixels after preprocessing")
    pre.add_argument("--stride", type=int, default=1, help="keep every N-th video frame")
    pre.add_argument("--start", type=int, default=0, help="first video frame to keep")
    pre.add_argument("--max-frames", type=int, default=None, help="at most N frames per source")
    pre.add_argument("--batch", type=int, default=16, help="frames per teacher call")
    pre.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    pre.add_argument("--val-fraction", type=float, default=0.05, help="held-out share, fixed at write time")
    pre.add_argument("--shard-size", type=int, default=1024, help="samples per shard file")
    pre.add_argument("--views", type=int, default=1,
                     help="crops per frame: the centre square, then N-1 seeded random squares (odd ones mirrored); "
                          "a few hundred photos need ~6 to become a training set")
    pre.set_defaults(func=_cmd_precompute)
    _add_precompute_denoiser_parser(kinds)
    _add_precompute_states_parser(kinds)
    _add_store_parser(sub)
    _add_ovae_parsers(sub)
    _add_generate_parser(sub)
    return p


def legacy_argv(argv: list[str]) -> list[str]:
    """The older spelling `osd precompute SOURCE ... --teacher ...` still means `osd precompute frames ...`."""
    kinds = ("frames", "denoiser", "clone-states", "-h", "--help")
    if argv[:1] == ["precompute"] and len(argv) > 1 and argv[1] not in kinds:
        return ["precompute", "frames", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `osd` console script."""
    argv = legacy_argv(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    out = getattr(args, "out", None)
    new_out = out is not None and not Path(out).exists()  # a folder this call creates is removed if it stays empty
    try:
        if getattr(args, "device", None) is not None:
            from organic_sd.devices import resolve_device

            resolve_device(args.device)  # every command: a device this machine lacks fails here, before any work
        return args.func(args)
    except KeyboardInterrupt:
        _drop_empty(out, new_out)
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:  # OSError: missing files, a file where a folder goes, ...
        _drop_empty(out, new_out)
        print(f"osd: error: {e}", file=sys.stderr)
        return 2


def _drop_empty(out: str | None, new: bool) -> None:
    """Remove the --out folder a failed call created and left empty: no clutter that looks like a result."""
    if new and Path(out).is_dir() and not any(Path(out).iterdir()):
        Path(out).rmdir()


if __name__ == "__main__":
    sys.exit(main())
