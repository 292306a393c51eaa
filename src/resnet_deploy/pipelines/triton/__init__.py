"""Triton Inference Server: a model repository from an export, and a local server to try it.

* :func:`write_repository` writes native entries (ONNX Runtime, TensorRT, OpenVINO) for NVIDIA's
  Triton containers and Python-backend entries (tensors, or encoded image bytes) that run this
  toolkit's :class:`~resnet_deploy.pipelines.embedder.Embedder` on any Triton.
* :class:`TritonServer` runs the CPU server from the ``nvidia-pytriton`` wheel on such a repository.
"""

from .config import ModelConfig, TensorConfig, render, validate_config, validate_model_name
from .repository import (ENTRY_KINDS, RepositoryConfig, RepositoryResult, build_repository, list_models, scan_export,
                         write_repository)
from .server import ServerConfig, ServerError, TritonServer, batch_histogram, find_distribution, free_port

__all__ = ["ENTRY_KINDS", "ModelConfig", "RepositoryConfig", "RepositoryResult", "ServerConfig", "ServerError",
           "TensorConfig", "TritonServer", "batch_histogram", "build_repository", "find_distribution", "free_port",
           "list_models", "render", "scan_export", "validate_config", "validate_model_name", "write_repository"]
