"""`GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape (the `openai` client's `models.list()` and
`models.retrieve()`): the checkpoints the live workers serve, with what each can do."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from service.gateway.auth import Caller
from service.gateway.errors import ApiError
from service.gateway.schemas import OpenAIError

router = APIRouter(prefix="/v1/models", tags=["models"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": OpenAIError, "description": "Missing or unknown API key."},
    503: {"model": OpenAIError, "description": "Redis is unreachable."},
}


class ModelOut(BaseModel):
    id: str = Field(description='"unclip-shapes" for the shipped model, else the checkpoint folder\'s name.')
    object: Literal["model"] = "model"
    created: int = Field(description="When the checkpoint was written (s since the epoch).")
    owned_by: str
    ops: list[str] = Field(description="The operations it can run.")
    max_size: int = Field(description="The largest output side in pixels.")
    shipped: bool = Field(description="The model that ships with unclip-serve.")
    imported_from: str | None = Field(description='"karlo" for an imported checkpoint, else null.')
    parameters: dict[str, int] = Field(description="Parameter counts per component (clip, prior, ...).")
    workers: int = Field(description="Live workers serving it.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


@router.get("", response_model=ModelList, summary="List the models the live workers serve", responses=ERRORS)
async def list_models(caller: Caller) -> ModelList:
    """Empty until a worker has loaded its checkpoint; a worker that stops (or dies) drops out."""
    return ModelList(data=[ModelOut(**model) for model in await caller.store.models.models()])


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    summary="Get one served model",
    responses={
        **ERRORS,
        400: {"model": OpenAIError, "description": "A model id over 256 characters."},
        404: {"model": OpenAIError, "description": "No live worker serves it."},
    },
)
async def get_model(model_id: Annotated[str, Path(max_length=256)], caller: Caller) -> ModelOut:
    for model in await caller.store.models.models():
        if model["id"] == model_id:
            return ModelOut(**model)
    raise ApiError(
        404,
        f"no live worker serves model {model_id!r}; GET /v1/models lists those served",
        param="model",
        code="model_not_found",
    )
