"""The unCLIP sampling pipeline (Contract B): `UnCLIPPipeline` and its `Sampling` / `Progress` types.

Modules, one idea each:
  sampling.py  diffusion steps → progress reports (the settings and reports live in models/contract.py)
  devices.py   device and dtype choice ("auto")
  images.py    PIL images and masks ↔ tensors in [-1, 1]
  latents.py   per-item generators and spherical interpolation
  stages.py    one stage each: text/image encoding, prior, decoder (sample / invert), upsamplers
  unclip.py    UnCLIPPipeline: loading and the five operations composed from the stages
"""

from models.contract import Progress, ProgressCallback, Sampling
from models.pipeline.unclip import UnCLIPPipeline

__all__ = ["Progress", "ProgressCallback", "Sampling", "UnCLIPPipeline"]
