"""ONNX export of the autoencoder's MLP and scoring with ONNX Runtime.

The autoencoder is re-exported after every incremental update, so export speed
matters. The graph of a scikit-learn ``MLPRegressor`` is a chain of
MatMul, Add and activation nodes; building it directly with :mod:`onnx.helper`
takes about 0.05 ms where ``skl2onnx.convert_sklearn`` takes about 8 ms (see
``benchmarks/hand_vs_library.py``). :func:`export_with_skl2onnx` is kept as the
reference the hand-built graph is tested against.

Two details are easy to get wrong and are handled here:

- skl2onnx exports a multi-output ``MLPRegressor`` with an output of shape
  ``(N * d, 1)``; :class:`OnnxRegressor` reshapes to ``(N, d)``.
- ONNX Runtime sizes its thread pools from the host's cores, not the
  container's CPU quota; the thread counts are set explicitly (one by default:
  the agent scores one small window at a time, and threads would only contend).
"""

from __future__ import annotations

import numpy as np

#: ONNX opset the exports target (supported by every onnxruntime >= 1.17).
TARGET_OPSET = 17
_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "logistic": "Sigmoid", "identity": None}


def mlp_to_onnx(coefs, intercepts, activation: str = "tanh") -> bytes:
    """Serialized ONNX model of an MLP regressor: float32 ``(N, d_in) -> (N, d_out)``.

    Parameters
    ----------
    coefs, intercepts : list of ndarray
        Layer weights and biases, as ``MLPRegressor.coefs_`` and ``intercepts_``.
    activation : {"tanh", "relu", "logistic", "identity"}
        Hidden-layer activation; the output layer is linear, as in ``MLPRegressor``.
    """
    from onnx import TensorProto, helper, numpy_helper

    if activation not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}")
    nodes, inits, current = [], [], "x"
    for i, (w, b) in enumerate(zip(coefs, intercepts)):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        current = f"a{i}"
        last = i == len(coefs) - 1
        if not last and _ACTIVATIONS[activation]:
            nodes.append(helper.make_node(_ACTIVATIONS[activation], [current], [f"h{i}"]))
            current = f"h{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    d_in, d_out = np.shape(coefs[0])[0], np.shape(coefs[-1])[1]
    graph = helper.make_graph(
        nodes, "edge_agent_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, d_out])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)],
                              producer_name="edge-agent")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    return model.SerializeToString()


def export_with_skl2onnx(mlp, n_features: int) -> bytes:
    """The library's export of a fitted ``MLPRegressor`` (reference for tests and benchmark)."""
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
        Outputs per row (skl2onnx flattens them; see module docstring).
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
