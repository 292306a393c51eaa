"""Triton Python-backend model written by ``resnet-deploy triton-repo`` (a copy of a template).

It needs ``resnet_deploy`` importable by the interpreter of Triton's Python backend stub: in
NVIDIA's container, ``pip install resnet-deploy`` there; ``resnet-deploy triton-serve`` runs the
stub with the interpreter of the environment it is started from. The work is done by
``resnet_deploy.pipelines.triton.handler`` (the toolkit's Embedder), so this file stays a shim.
"""

import json
import sys

import triton_python_backend_utils as pb_utils


def _error(exc):
    """A Triton error for ``exc``: INVALID_ARG (HTTP 400) for bad input, INTERNAL otherwise."""
    from resnet_deploy.errors import UsageError

    code_enum = getattr(pb_utils.TritonError, "INVALID_ARG", None) if isinstance(exc, UsageError) else None
    if code_enum is None:
        return pb_utils.TritonError(str(exc))
    return pb_utils.TritonError(str(exc), code_enum)


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        try:
            from resnet_deploy.pipelines.triton.handler import from_triton_args
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"cannot import resnet_deploy in Triton's Python backend ({sys.executable}, Python "
                f"{sys.version.split()[0]}): {exc}; install resnet-deploy into that environment") from exc
        self.input_name = self.model_config["input"][0]["name"]
        self.output_name = self.model_config["output"][0]["name"]
        try:
            self.handler = from_triton_args(args, self.model_config)
        except Exception as exc:
            raise pb_utils.TritonModelException(f"{type(exc).__name__}: {exc}") from exc

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        responses = []
        for result in self.handler.handle(arrays):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(result)))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, result)]))
        return responses

    def finalize(self):
        handler = getattr(self, "handler", None)
        if handler is not None:
            handler.close()
