"""The Stable Diffusion denoiser teacher: a diffusers pipeline's UNet, scheduler and CLIP text encoder.

x_t are the UNet's latents (VAE latents times the VAE's scaling factor, as the pipeline uses
them); cond is the text encoder's last hidden state (B, L, D), the UNet's
`encoder_hidden_states`. v- and x0-predicting UNets are converted to eps. diffusers and
transformers are imported lazily: optional dependencies, slow to import.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from organic_sd.teachers.common import TeacherError
from organic_sd.teachers.denoiser_base import check_eps_inputs
from organic_sd.teachers import hub
from organic_sd.teachers.diffusers_vae import _diffusers, _low_cpu_mem_usage, read_config

PARTS = ("unet", "scheduler", "text_encoder", "tokenizer")
# what a hub download fetches: weights in safetensors only, the VAE too (latent teachers decode through it)
HUB_PATTERNS = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "scheduler/*", "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
LOCAL_HINT = ("pass a local diffusers pipeline folder instead (model_index.json, unet/, scheduler/, text_encoder/, "
              "tokenizer/), or --teacher ddpm-mnist for the shipped pixel-space DDPM; on a machine with network, "
              "`hf download {repo} --local-dir DIR` fetches the folder")


class SDDenoiser:
    """A Stable Diffusion UNet as a Denoiser: eps(x_t (B, C, h, w) latents, t (B,), cond (B, L, D) or None)."""

    pixel_range = (-1.0, 1.0)  # its VAE decodes latents to images in [-1, 1]

    def __init__(self, unet, text_encoder, tokenizer, alphas_cumprod: torch.Tensor, prediction_type: str,
                 id: str, device: torch.device, vae_spec: str | None = None):
        cfg = unet.config
        self.unet = unet.to(device, torch.float32).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(device, torch.float32).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)  # (T,)
        self.num_train_timesteps = len(self.alphas_cumprod)
        self.prediction_type = prediction_type
        self.id = id
        self.device = device
        self.vae_spec = vae_spec  # the pipeline's VAE folder, for decoding latents to images
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.sample_shape = (int(cfg.in_channels), int(size), int(size))
        # L: a tokenizer without a max length says 1e30; the text encoder's positions are the real limit
        L = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
        self.cond_shape = (L, int(text_encoder.config.hidden_size))
        self._empty: torch.Tensor | None = None  # (1, L, D) embedding of "", the unconditional input

    def __repr__(self) -> str:
        return (f"SDDenoiser(id={self.id!r}, sample_shape={self.sample_shape}, cond_shape={self.cond_shape}, "
                f"prediction_type={self.prediction_type!r}, device={self.device})")

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """P prompts -> (P, L, D) float32 last hidden states of the CLIP text encoder (padded to L tokens)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.cond_shape[0], truncation=True,
                             return_tensors="pt").input_ids  # (P, L)
        return self.text_encoder(ids.to(self.device))[0].float()  # (P, L, D)

    def _check_cond(self, cond, B: int) -> torch.Tensor:
        if cond is None:
            if self._empty is None:
                self._empty = self.encode_text([""])
            return self._empty.expand(B, *self.cond_shape)
        if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or tuple(cond.shape[1:]) != self.cond_shape \
                or cond.shape[0] not in (1, B):
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"cond must have shape ({B}, {self.cond_shape[0]}, {self.cond_shape[1]}) "
                             f"(from encode_text) or be None, got {got}")
        return cond.to(self.device, torch.float32).expand(B, *self.cond_shape)

    @torch.no_grad()
    def eps(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) x_t, (B,) integer steps, (B, L, D) cond (None: the empty prompt) -> (B, C, h, w) eps."""
        tt = check_eps_inputs(x_t, t, self.sample_shape, self.num_train_timesteps)  # (B,) int64
        B = x_t.shape[0]
        c = self._check_cond(cond, B)
        x = x_t.to(self.device, torch.float32)
        out = self.unet(x, tt.to(self.device), encoder_hidden_states=c).sample  # (B, C, h, w)
        if self.prediction_type != "epsilon":
            ab = self.alphas_cumprod[tt].to(self.device, torch.float32)[:, None, None, None]  # (B, 1, 1, 1)
            if self.prediction_type == "v_prediction":
                out = ab.sqrt() * out + (1 - ab).sqrt() * x
            else:  # "sample": out is the x_0 estimate
                out = (x - ab.sqrt() * out) / (1 - ab).sqrt()
        return out.to(x_t.device)


def _quick_digest(modules: Sequence[torch.nn.Module], extra: str, n: int = 12) -> str:
    """sha256 over names, shapes and up to 4096 evenly spaced values per tensor: an SD UNet has 860 M values."""
    h = hashlib.sha256(extra.encode())
    for i, m in enumerate(modules):
        for name, v in sorted(m.state_dict().items()):
            flat = v.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(f"{i}.{name}:{tuple(v.shape)};".encode())
            h.update(flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:n]


def load_folder(folder: Path, device: torch.device, id_base: str | None = None) -> SDDenoiser:
    """A local diffusers SD pipeline folder -> SDDenoiser; `id_base` None -> a digest of the weights."""
    diffusers = _diffusers()
    try:
        import transformers
    except ImportError:
        raise TeacherError("Stable Diffusion teachers need transformers: pip install 'organic-sd[diffusers]'") from None
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise TeacherError(f"{str(folder)!r} is not a Stable Diffusion pipeline folder: it lacks {missing} "
                           f"(needs {list(PARTS)})")
    index = read_config(folder / "model_index.json") or {}
    unet_cls = (index.get("unet") or [None, "UNet2DConditionModel"])[1]
    if unet_cls != "UNet2DConditionModel":
        raise TeacherError(f"{str(folder)!r}: its unet is a {unet_cls}; only UNet2DConditionModel pipelines are read")
    what = f"SD pipeline {str(folder)!r}"
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet",
                                                              low_cpu_mem_usage=_low_cpu_mem_usage())
    except (OSError, ValueError, RuntimeError) as e:
        raise TeacherError(f"{what}: could not load unet/ ({str(e).splitlines()[0]})") from None
    extra_cond = [getattr(unet.config, k, None) for k in ("addition_embed_type", "class_embed_type")]
    if any(extra_cond):
        raise TeacherError(f"{what}: the UNet needs extra conditioning ({[c for c in extra_cond if c]}, e.g. SDXL's "
                           "pooled text and time ids), which this teacher adapter does not provide; use an SD 1.x/2.x "
                           "pipeline")
    if not unet.config.sample_size:
        raise TeacherError(f"{what}: unet/config.json has no sample_size, so the latent size is unknown")
    cfg = read_config(folder / "scheduler" / "scheduler_config.json")
    if cfg is None:
        raise TeacherError(f"{what}: scheduler/scheduler_config.json is missing or not JSON")
    # only the training schedule matters (the sampler is ours): every diffusers scheduler config
    # holds it, and DDPMScheduler turns it into alpha-bar
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    try:
        sched = diffusers.DDPMScheduler(**{k: cfg[k] for k in keep if k in cfg})
    except (TypeError, ValueError, NotImplementedError) as e:
        raise TeacherError(f"{what}: scheduler config does not give a noise schedule ({e})") from None
    prediction_type = cfg.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise TeacherError(f"{what}: prediction_type {prediction_type!r} is not epsilon, v_prediction or sample")
    ab = sched.alphas_cumprod.to(torch.float64)  # (T,)
    if float(ab[-1]) <= 1e-8:
        # at alpha-bar 0 (zero-SNR schedules) x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) is undefined,
        # and the eps-based DDIM of this package divides by it
        raise TeacherError(f"{what}: its schedule ends at alpha-bar {float(ab[-1]):.3g} (zero terminal SNR); "
                           "eps-based sampling cannot start there, so such pipelines are not supported")
    try:
        text_encoder = transformers.CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    except (OSError, ValueError, RuntimeError) as e:
        raise TeacherError(f"{what}: could not load text_encoder/ or tokenizer/ ({str(e).splitlines()[0]})") from None
    if int(text_encoder.config.hidden_size) != int(unet.config.cross_attention_dim):
        raise TeacherError(f"{what}: text encoder width {text_encoder.config.hidden_size} != UNet "
                           f"cross_attention_dim {unet.config.cross_attention_dim}")
    if id_base is None:
        extra = f"prediction={prediction_type};ab={ab[0].item():.6g},{ab[-1].item():.6g},{len(ab)}"
        id_base = "sd-pipeline:" + _quick_digest([unet, text_encoder], extra)
    vae = folder / "vae"
    return SDDenoiser(unet, text_encoder, tokenizer, ab, prediction_type, id_base, device,
                      str(vae) if (vae / "config.json").is_file() else None)


def resolve_hub(spec: str) -> tuple[Path, str]:
    """A pipeline's hub id -> (local snapshot folder, id); see teachers/hub.py."""
    return hub.resolve(spec, "denoiser", ["model_index.json"], [HUB_PATTERNS], LOCAL_HINT,
                       "has no model_index.json; it is not a diffusers pipeline")
