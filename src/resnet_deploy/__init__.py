"""resnet-deploy: the ResNet family from PyTorch to production inference.

Stages, in the order data flows: ``models`` -> ``export`` (dynamic ONNX, FP16) ->
``calibration`` (INT8 Q/DQ) -> ``runtime`` (engines and runners) -> ``parity`` ->
``pipelines`` / ``bench``. Heavy optional packages (TensorRT, CUDA bindings, OpenVINO,
Triton, Ray) are imported only inside the functions that use them.
"""

__version__ = "0.1.0"
