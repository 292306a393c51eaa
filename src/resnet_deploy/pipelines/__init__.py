"""Deployments around a runner: the shared :class:`Embedder`, embedding files, and (imported only
when used) the Triton model and the Ray job."""

from .embedder import Embedder, ImageModel

__all__ = ["Embedder", "ImageModel"]
