"""Model loading: packaged offline weights, GGUF files (cached as safetensors), local dirs, Hub ids."""

from rsp.models.embeddings import EmbeddingModel, embedding_stats, load_embedding_model
from rsp.models.loading import (
    LoadedModel,
    ModelLoadError,
    default_cache_dir,
    load_model,
    resolve_model_dir,
    wrap_model,
)
from rsp.models.packaged import PACKAGED_MODELS, PackagedModelMissing

__all__ = [
    "PACKAGED_MODELS",
    "EmbeddingModel",
    "LoadedModel",
    "ModelLoadError",
    "PackagedModelMissing",
    "default_cache_dir",
    "embedding_stats",
    "load_embedding_model",
    "load_model",
    "resolve_model_dir",
    "wrap_model",
]
