"""The O-UNet: OLA stacks cloning a denoiser teacher's eps (no gradients).

Single-scale: one stack applied per pixel reads the per-pixel inputs of ounet/features.py and writes
the C channels of the prediction at that pixel. Multi-scale (config.stage_grid > 0): a coarse stage
(ounet/stage.py) first maps the whole pooled image to a g x g prediction, and the per-pixel stack
also reads a window of it, upsampled. The stacks predict eps, x0 or v (config.target, ounet/targets.py);
the model returns eps. One file (.safetensors) holds the stacks, the text adapter if any, the
noise-level head if any, the teacher's alpha-bar schedule and the config, so loading needs nothing else.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from organic_sd.files import WEIGHTS_NAME, atomic_write, read_safetensors
from organic_sd.ola.module import FORMAT as OLA_FORMAT
from organic_sd.ola.module import OLAConfig, OLAModule, load_weights
from organic_sd.ounet.adapter import TextAdapter
from organic_sd.ounet.clean import clean_in_dim, clean_x0
from organic_sd.ounet.fast import fast_eps
from organic_sd.ounet.features import OUNetConfig, features
from organic_sd.ounet.head import head_conv
from organic_sd.ounet.prompts import PromptAdapter
from organic_sd.ounet.stage import stage_in_dim, stage_map
from organic_sd.ounet.targets import to_eps

FORMAT = "organic_sd.ounet/1"
ASSETS = Path(__file__).resolve().parents[1] / "assets" / "ounet"
DEFAULT_PATH = ASSETS / "ounet.safetensors"
SHIPPED = {"mnist": DEFAULT_PATH, "mnist-cond": ASSETS / "mnist-cond.safetensors"}  # OUNet.load(name)


class PromptNotUnderstood(UserWarning):
    """A prompt that asks for none of a class-conditional O-UNet's classes; the nearest one is drawn."""


class OUNet(nn.Module):
    """A gradient-free clone of a denoiser: u(x_t, t, cond=None) -> eps (B, C, H, W), in teacher units."""

    def __init__(self, config: OUNetConfig, module: nn.Module, schedule: torch.Tensor, meta: dict | None = None,
                 adapter: TextAdapter | None = None, head: OLAModule | None = None, stage: nn.Module | None = None,
                 prompts: PromptAdapter | None = None, low: OLAModule | None = None,
                 clean: OLAModule | None = None):
        """`adapter`: the text adapter from the teacher's embedding to cond (its cond_dim must be config's);
        `head`: the noise-level head (ounet/head.py), an OLAModule K (C k k + 1) -> C, when config.head_buckets > 0;
        `stage`: the coarse stage (ounet/stage.py), stage_in_dim -> C g g, when config.stage_grid > 0;
        `prompts`: a class-conditional O-UNet's prompt adapter (ounet/prompts.py), text -> class;
        `low`: the low-noise stack (ounet/low.py), in_dim -> C, used for t < config.low_split when that is > 0;
        `clean`: the clean stage (ounet/clean.py), clean_in_dim -> C, redrawing the low stack's x0 when
        config.clean_window > 0."""
        super().__init__()
        schedule = torch.as_tensor(schedule, dtype=torch.float64).cpu()
        if schedule.ndim != 1 or schedule.numel() != config.num_steps:
            raise ValueError(f"schedule must be ({config.num_steps},) alpha-bar values, got {tuple(schedule.shape)}")
        if adapter is not None and adapter.config.cond_dim != config.cond_dim:
            raise ValueError(f"the text adapter gives {adapter.config.cond_dim} cond values, the O-UNet takes "
                             f"{config.cond_dim}")
        self.config, self.module, self.meta = config, module, dict(meta or {})
        self.adapter = adapter
        C, k, K = config.sample_shape[0], config.window, config.head_buckets
        if (head is None) != (K == 0) or (head is not None and (head.in_dim, head.out_dim, head.config.hidden)
                                          != (K * (C * k * k + 1), C, ())):
            raise ValueError(f"head_buckets {K} needs a linear head {K * (C * k * k + 1)} -> {C}, got "
                             f"{None if head is None else (head.in_dim, head.out_dim, head.config.hidden)}")
        self.head = head
        g = config.stage_grid
        want = (stage_in_dim(config), C * g * g) if g else None
        got = None if stage is None else (stage.in_dim, stage.out_dim)
        if got != want:
            need = f"a coarse stage {want[0]} -> {want[1]}" if g else "no coarse stage"
            raise ValueError(f"stage_grid {g} needs {need}, got {'none' if got is None else got}")
        self.stage = stage
        want = (config.in_dim, C) if config.low_split else None
        got = None if low is None else (low.in_dim, low.out_dim)
        if got != want:
            need = f"a low-noise stack {want[0]} -> {want[1]}" if want else "no low-noise stack"
            raise ValueError(f"low_split {config.low_split} needs {need}, got {'none' if got is None else got}")
        self.low = low
        want = (clean_in_dim(config), C) if config.clean_window else None
        got = None if clean is None else (clean.in_dim, clean.out_dim)
        if got != want:
            need = f"a clean stage {want[0]} -> {want[1]}" if want else "no clean stage"
            raise ValueError(f"clean_window {config.clean_window} needs {need}, got {'none' if got is None else got}")
        self.clean = clean
        if prompts is not None and prompts.config.classes != config.classes:
            raise ValueError(f"the prompt adapter names classes {prompts.config.classes}, the O-UNet "
                             f"{config.classes or 'none (not class-conditional)'}")
        self.prompts = prompts
        self.register_buffer("_schedule", schedule, persistent=False)
        self.requires_grad_(False)
        self.eval()

    # -- the Denoiser interface (so teachers.ddim.ddim_sample runs an O-UNet as it runs a teacher)

    @property
    def schedule(self) -> torch.Tensor:
        """(T,) float64 alpha-bar of the teacher's schedule, indexed by t."""
        return self._schedule.cpu()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.config.sample_shape

    @property
    def cond_shape(self) -> tuple[int, ...] | None:
        """What cond is: the teacher's text embedding shape with an adapter, else (cond_dim,); None: unconditional."""
        if self.adapter is not None:
            return self.adapter.config.cond_shape
        return (self.config.cond_dim,) if self.config.cond_dim else None

    @property
    def id(self) -> str:
        return f"ounet:{self.config.teacher}"

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def eps(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Same as calling the model."""
        return self(x_t, t, cond)

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) integer steps (or one int), cond or None -> (B, C, H, W) eps.

        cond: with a text adapter, the teacher's text embedding (B or 1, L, D) or pooled (B or 1, D);
        without one, the cond vectors themselves (B, cond_dim).
        """
        from organic_sd.teachers.denoiser_base import check_eps_inputs

        cfg = self.config
        tt = check_eps_inputs(x_t, t, cfg.sample_shape, cfg.num_steps)
        B = x_t.shape[0]
        if cfg.cond_dim == 0 and cond is not None:
            raise ValueError("this O-UNet is unconditional: pass cond=None")
        if cfg.classes:
            cond = self.class_cond(cond, B)
        if self.adapter is not None:
            if cond is None:
                raise ValueError("this O-UNet is conditional: pass the teacher's text embedding as cond "
                                 "(teacher.encode_text([prompt]); the empty prompt for unconditional samples)")
            if cond.shape[0] not in (1, B):
                raise ValueError(f"cond must hold 1 or {B} text embeddings, got {tuple(cond.shape)}")
            cond = self.adapter(cond).expand(B, -1)  # (B, cond_dim)
        if cfg.cond_dim and (cond is None or cond.reshape(B, -1).shape[1] != cfg.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"cond must be (B, {cfg.cond_dim}) for this O-UNet, got {got}")
        x = x_t.to(self.device, torch.float32)
        tt = tt.to(x.device)
        coarse = None if self.stage is None else stage_map(cfg, self.stage, self._schedule, x, tt, cond)  # (B, C, H, W)
        low = tt < cfg.low_split if self.low is not None else torch.zeros_like(tt, dtype=torch.bool)  # (B,)
        if low.all():
            out = self._low_eps(x, tt, cond, coarse)
        elif not low.any():
            out = self._stack_eps(self.module, cfg.target, x, tt, cond, coarse)
        else:  # a batch mixing noise levels: each row through its own stack
            pick = lambda v, m: None if v is None else v[m]  # noqa: E731
            out = torch.empty_like(x)
            out[low] = self._low_eps(x[low], tt[low], pick(cond, low), pick(coarse, low))
            out[~low] = self._stack_eps(self.module, cfg.target, x[~low], tt[~low], pick(cond, ~low),
                                        pick(coarse, ~low))
        if self.head is not None:
            out = out + head_conv(self, x, tt.to(x.device))
        return out

    def _stack_eps(self, module: nn.Module, target: str, x, tt, cond, coarse) -> torch.Tensor:
        """One per-pixel stack on (B, C, H, W) x at steps tt (B,) -> (B, C, H, W) eps (the stack predicts `target`)."""
        out = self._stack_pred(module, x, tt, cond, coarse)
        if target != "eps":
            out = to_eps(target, out, x, self._schedule.to(x.device)[tt].float())
        return out

    def _stack_pred(self, module: nn.Module, x, tt, cond, coarse) -> torch.Tensor:
        """One per-pixel stack's own prediction (its target's units), (B, C, H, W)."""
        if isinstance(module, OLAModule):  # the same function as below, as convolutions (ounet/fast.py)
            return fast_eps(self, x, tt, cond, coarse, module)
        rows = features(self.config, self._schedule, x, tt, cond, coarse)  # (B, HW, in)
        return module(rows).transpose(1, 2).reshape(x.shape)  # (B, C, H, W)

    def _low_eps(self, x, tt, cond, coarse) -> torch.Tensor:
        """Steps below the split: the low-noise stack, then the clean stage on its x0 if there is one."""
        cfg = self.config
        if self.clean is None:
            return self._stack_eps(self.low, cfg.low_target, x, tt, cond, coarse)
        x0 = clean_x0(cfg, self.clean, self._schedule, x, tt, self._stack_pred(self.low, x, tt, cond, coarse))
        return to_eps("x0", x0, x, self._schedule.to(x.device)[tt].float())

    def low_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) x_t at steps t (B,), all below the split -> the low-noise stack's own x0, before any clean
        stage (what a clean stage reads); cond as the stacks read it (a store's cond rows)."""
        cfg = self.config
        if self.low is None or cfg.low_target != "x0":
            raise ValueError("this O-UNet has no low-noise stack predicting x0 (train one with "
                             "`osd train denoiser-low`)")
        if (t >= cfg.low_split).any():
            raise ValueError(f"low_x0 takes steps below the split {cfg.low_split}, got up to {int(t.max())}")
        x = x_t.to(self.device, torch.float32)
        tt = t.to(x.device)
        coarse = None if self.stage is None else stage_map(cfg, self.stage, self._schedule, x, tt, cond)
        return self._stack_pred(self.low, x, tt, cond, coarse)

    def class_cond(self, cond, batch: int) -> torch.Tensor:
        """A class-conditional O-UNet's cond: class indices (B,) or one int, or class-weight rows (B or 1, K),
        -> (B, K) rows (a one-hot row is that class)."""
        K = len(self.config.classes)
        if cond is None:
            raise ValueError(f"this O-UNet is class-conditional: pass cond, a class index 0..{K - 1} per sample "
                             f"(classes {', '.join(self.config.classes)})")
        cond = torch.as_tensor(cond)
        if not cond.is_floating_point():
            if cond.ndim > 1 or ((cond < 0) | (cond >= K)).any():
                raise ValueError(f"class indices must be 0..{K - 1} in a (B,) tensor, got {cond.tolist()}")
            cond = torch.nn.functional.one_hot(cond.reshape(-1), K).float()
        if cond.ndim != 2 or cond.shape[1] != K or cond.shape[0] not in (1, batch):
            raise ValueError(f"cond must be (B,) class indices or ({batch} or 1, {K}) class rows, got {tuple(cond.shape)}")
        return cond.expand(batch, -1).to(self.device, torch.float32)

    def class_rows(self, cls, n: int, guidance: float = 1.0) -> torch.Tensor:
        """Class indices (n,) or one int -> (n, K) cond rows, moved `guidance` times as far from the all-classes
        mean row (1/K each) as the class's one-hot row: 1 is the row as trained; > 1 amplifies the class.

        The rows enter every stack's first layer linearly, so this is guidance in pre-activation space at no
        extra cost per step. Measured (docs/BENCHMARKS.md): more samples of the class asked for, bolder
        strokes, further from the teacher's shape distribution."""
        if not self.config.classes:
            raise ValueError("class rows are for a class-conditional O-UNet; this one is not")
        if not guidance > 0:
            raise ValueError(f"guidance must be positive (1: as trained), got {guidance}")
        K = len(self.config.classes)
        return self.class_cond(torch.as_tensor(cls).reshape(-1), n) * guidance + (1 - guidance) / K

    def sample(self, n: int, steps: int = 8, seed: int = 0, cls=None, prompt: str | None = None,
               guidance: float = 1.0, last_t: int | None = None) -> torch.Tensor:
        """n seeded DDIM samples (n, C, H, W) in the teacher's pixel range; a class-conditional O-UNet takes the
        class `cls` (an index, or one per sample) or a `prompt` read by its prompt adapter, and `guidance`
        (class_rows); `last_t`: the schedule's last step (teachers/ddim.py; None: top / steps)."""
        from organic_sd.teachers.ddim import ddim_sample, seeded_noise

        cond = None
        if prompt is not None:
            if self.prompts is None:
                raise ValueError("this O-UNet has no prompt adapter: pass cls (a class index) instead of a prompt")
            if cls is not None:
                raise ValueError("pass a class or a prompt, not both")
            cls, _, known = self.prompts.classify([prompt])[0]
            if not known:
                warnings.warn(f"the prompt {prompt!r} asks for no class this O-UNet knows (it is far from every "
                              f"class's phrasings); drawing the nearest, {self.config.classes[cls]!r}",
                              PromptNotUnderstood, stacklevel=2)
        if self.config.classes:
            cond = self.class_rows(cls if cls is not None else -1, n, guidance)
        elif cls is not None or guidance != 1.0:
            raise ValueError("this O-UNet is not class-conditional: leave cls and guidance out")
        with torch.no_grad():
            x = ddim_sample(self, seeded_noise(self.sample_shape, n, seed).to(self.device), steps, cond, last=last_t)
        lo, hi = self.config.pixel_range
        return x.clamp(lo, hi)

    def num_parameters(self) -> int:
        """Number of stored numbers of the stacks, the text adapter and the noise-level head (weights and biases)."""
        return sum(p.numel() for p in self.parameters())

    # -- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write one .safetensors file (a folder gets model.safetensors inside); atomic."""
        from safetensors.torch import save_file

        if not isinstance(self.module, OLAModule):
            raise TypeError(f"only an O-UNet whose stack is an OLAModule can be saved, not {type(self.module).__name__}")
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tensors["schedule"] = self.schedule.contiguous()
        md = {"format": FORMAT, "config": json.dumps(asdict(self.config)),
              "ola_config": json.dumps(asdict(self.module.config)),
              "training": json.dumps(self.module.training_summary, default=str),
              "meta": json.dumps(self.meta, default=str)}
        if self.adapter is not None:  # same file: an O-UNet is never separated from its adapter
            tensors.update({f"adapter.{k}": v.detach().cpu().contiguous()
                            for k, v in self.adapter.module.state_dict().items()})
            md["adapter"] = json.dumps(self.adapter.config_dict(), default=str)
        for prefix, part in (("head", self.head), ("stage", self.stage), ("low", self.low), ("clean", self.clean)):
            if part is not None:  # read back by _load_part
                tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in part.state_dict().items()})
                md[f"{prefix}_config"] = json.dumps(asdict(part.config))
                md[f"{prefix}_training"] = json.dumps(part.training_summary, default=str)
        if self.prompts is not None:
            pt, pmd = self.prompts.state()
            tensors.update(pt)
            md.update(pmd)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=md))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> OUNet:
        """Load an O-UNet file or run folder, or a shipped one by name ("mnist", "mnist-cond"); no path: "mnist"."""
        path = "mnist" if path is None else path
        if isinstance(path, str) and path in SHIPPED and not Path(path).exists():
            if not SHIPPED[path].is_file():
                raise FileNotFoundError(f"no O-UNet {path!r} shipped at {SHIPPED[path]}; train one with "
                                        "`osd train denoiser` and pass its run folder")
            path = SHIPPED[path]
        file, tensors, md = read_safetensors(path, "O-UNet")
        if md.get("format") != FORMAT:
            raise ValueError(f"{file} is not an O-UNet (format {md.get('format')!r}, expected {FORMAT!r})")
        cfg = json.loads(md["config"])
        cfg.pop("extra", None)  # files written before the unused `extra` field was dropped hold an empty one
        cfg = OUNetConfig(**cfg)
        ocfg = json.loads(md["ola_config"])
        if ocfg.get("format") != OLA_FORMAT:
            raise ValueError(f"{file}: its stack has format {ocfg.get('format')!r}, expected {OLA_FORMAT!r}")
        state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        module = load_weights(OLAModule(OLAConfig(**ocfg), json.loads(md.get("training", "{}"))), state,
                              f"{file}: stack")
        if module.in_dim != cfg.in_dim or module.out_dim != cfg.sample_shape[0]:
            raise ValueError(f"{file}: stack {module.in_dim} -> {module.out_dim} does not fit the config "
                             f"({cfg.in_dim} -> {cfg.sample_shape[0]})")
        # the optional OLA parts, each needed exactly when the config names it
        head = _load_part(file, md, tensors, "head", f"a {cfg.head_buckets}-bucket head", "head") \
            if cfg.head_buckets else None
        stage = _load_part(file, md, tensors, "stage", "a coarse stage", "coarse stage") if cfg.stage_grid else None
        low = _load_part(file, md, tensors, "low", "a low-noise stack", "low-noise stack") if cfg.low_split else None
        clean = _load_part(file, md, tensors, "clean", "a clean stage", "clean stage") if cfg.clean_window else None
        try:
            u = cls(cfg, module, tensors["schedule"], json.loads(md.get("meta", "{}")),
                    _load_adapter(file, md, tensors), head, stage, PromptAdapter.from_state(md, tensors, str(file)),
                    low, clean)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from None
        return u.to(device)


def _load_part(file: Path, md: dict, tensors: dict, prefix: str, named: str, label: str) -> OLAModule:
    """The OLA part stored under `prefix` (tensors `prefix.*`, metadata `prefix_config` and `prefix_training`);
    a ValueError when the config names it (`named`) but the file holds none."""
    if f"{prefix}_config" not in md:
        raise ValueError(f"{file}: its config names {named} but the file holds none")
    module = OLAModule(OLAConfig(**json.loads(md[f"{prefix}_config"])), json.loads(md.get(f"{prefix}_training", "{}")))
    return load_weights(module, {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")},
                        f"{file}: {label}")


def _load_adapter(file: Path, md: dict, tensors: dict) -> TextAdapter | None:
    """The text adapter stored beside the stack (tensors `adapter.*`, metadata `adapter`), or None if there is none."""
    state = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    if "adapter" not in md:
        if state:
            raise ValueError(f"{file}: holds text adapter tensors ({sorted(state)}) but no adapter config: a broken "
                             "O-UNet file")
        return None
    if not state:
        raise ValueError(f"{file}: its metadata names a text adapter but the file holds no adapter tensors: a broken "
                         "O-UNet file")
    try:
        return TextAdapter.from_state(json.loads(md["adapter"]), state)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{file}: bad text adapter ({e})") from None
