"""Export of a scikit-learn MLP to ONNX and scoring with ONNX Runtime.

Two details are easy to get wrong and are handled here:

- skl2onnx exports a multi-output ``MLPRegressor`` with an output of shape
  ``(N * d, 1)``; it is reshaped to ``(N, d)``.
- ONNX Runtime sizes its thread pools from the host's cores, not the
  container's CPU quota; the thread counts are set explicitly (one by default:
  the agent scores one small window at a time, and threads would only contend).
"""

from __future__ import annotations

import numpy as np

#: ONNX opset the exports target (supported by every onnxruntime >= 1.17).
TARGET_OPSET = 17


def export_mlp(mlp, n_features: int) -> bytes:
    """Serialized ONNX model of a fitted ``MLPRegressor`` taking float32 ``(N, n_features)``."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(mlp, initial_types=[("x", FloatTensorType([None, n_features]))],
                          target_opset=TARGET_OPSET)
    return onx.SerializeToString()


class OnnxRegressor:
    """An ONNX regression model served by ONNX Runtime on the CPU.

    Parameters
    ----------
    model : bytes
        Serialized ONNX model with one float input ``(N, n_features)``.
    n_outputs : int
        Outputs per row (the export flattens them; see module docstring).
    threads : int
        Intra-op threads; inter-op is always one (sequential graph).
    """

    def __init__(self, model: bytes, n_outputs: int, *, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.model = model
        self.n_outputs = n_outputs
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def predict(self, X) -> np.ndarray:
        """Outputs for the rows of ``X`` (cast to 2-D float32, as ORT requires)."""
        X = np.ascontiguousarray(np.atleast_2d(X), dtype=np.float32)
        out = self.session.run(None, {self._input: X})[0]
        return out.reshape(X.shape[0], self.n_outputs)
