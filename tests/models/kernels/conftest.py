"""Kernel tests run compiled on CUDA, or through Triton's interpreter on CPU-only machines.

TRITON_INTERPRET must be set before any kernel module is imported (Triton reads it when a kernel is
defined), hence here, at collection time, before the test modules import them. It is not set on a CUDA
machine: there the tests run the real compiled kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
