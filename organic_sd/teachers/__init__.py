"""VAE teachers: `load_teacher(spec)` gives encode/decode over [-1, 1] images (SPEC §3)."""

from organic_sd.teachers.base import Teacher
from organic_sd.teachers.common import TeacherError
from organic_sd.teachers.diffusers_vae import VAETeacher
from organic_sd.teachers.load import load_teacher
from organic_sd.teachers.taesd import VARIANTS, TAESDTeacher

__all__ = ["Teacher", "TeacherError", "VAETeacher", "TAESDTeacher", "VARIANTS", "load_teacher"]
from organic_sd.teachers.denoiser import Denoiser, load_denoiser  # noqa: E402

__all__ += ["Denoiser", "load_denoiser"]
