"""Teachers: `load_teacher(spec)` gives a VAE's encode/decode over [-1, 1] images; `load_denoiser(spec)` a
denoiser's eps(x_t, t, cond) and its noise schedule."""

from organic_sd.teachers.base import Teacher
from organic_sd.teachers.common import TeacherError
from organic_sd.teachers.denoiser import load_denoiser
from organic_sd.teachers.denoiser_base import Denoiser
from organic_sd.teachers.diffusers_vae import VAETeacher
from organic_sd.teachers.load import load_teacher
from organic_sd.teachers.taesd import VARIANTS, TAESDTeacher

__all__ = ["Teacher", "TeacherError", "VAETeacher", "TAESDTeacher", "VARIANTS", "load_teacher", "Denoiser",
           "load_denoiser"]
