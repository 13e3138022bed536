"""The data path: frame sources -> one preprocessing function -> the precompute store."""

from organic_sd.data.precompute import PrecomputeReport, precompute
from organic_sd.data.preprocess import FrameTooSmallError, describe_preprocess, load_image, preprocess
from organic_sd.data.sources import Frame, iter_frames, open_source, open_sources, sample_names
from organic_sd.data.store import Store, StoreError
from organic_sd.data.store_writer import DiskFullError, StoreWriter

__all__ = [
    "DiskFullError", "Frame", "FrameTooSmallError", "PrecomputeReport", "Store", "StoreError", "StoreWriter",
    "describe_preprocess", "iter_frames", "load_image", "open_source", "open_sources", "precompute", "preprocess",
    "sample_names",
]
