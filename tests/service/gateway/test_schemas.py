"""The API bodies against the contract: each job body takes exactly the Sampling settings its op may set
(`Sampling.job_fields(op)`), so a new setting cannot reach the worker without its bound here, nor the
other way round."""

from __future__ import annotations

from typing import get_args

import pytest

from models.contract import OPS, Sampling
from service.gateway.schemas import JobBody

# What a job body holds besides sampling settings: the op, its inputs, the seed, the op's own options and
# its webhook.
NOT_SAMPLING = {"op", "seed", "prompt", "source_caption", "n", "frames", "image", "image_a", "image_b",
                "mask", "eta", "latent", "webhook", "webhook_events"}
BODIES = {get_args(body.model_fields["op"].annotation)[0]: body for body in get_args(JobBody)}


def test_there_is_one_body_per_operation() -> None:
    assert sorted(BODIES) == sorted(OPS)


@pytest.mark.parametrize("op", OPS)
def test_a_body_takes_the_sampling_settings_of_its_op(op: str) -> None:
    fields = set(BODIES[op].model_fields)
    assert fields - NOT_SAMPLING == set(Sampling.job_fields(op))
