"""``check_tensorrt_ready``: would TensorRT's ONNX parser take this graph?

Checks, without TensorRT: every node in the default ONNX domain and in
:data:`TENSORRT_OPS` (a conservative subset of the onnx-tensorrt operator support matrix:
ops marked supported since TensorRT 8.4, plus LayerNormalization, supported since 8.6), an
op of :data:`TENSORRT_NEWER_OPS` (``Attention``: TensorRT 10.14 and newer) reported with the
version it needs, the opset within TensorRT 10.0's range (9-20); LSTM
with ``layout=0`` and the same activations in both directions; LayerNormalization with the
Y output only; Conv / Gemm / MatMul / LSTM weights as initializers; a float32 or float16
graph input. Returns the list of problems found (empty: ready).
"""

from __future__ import annotations

import os

from atfnn_fast._deps import require

from .onnx_export import INPUT_NAME, load_model

TENSORRT_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GRU HardSigmoid Identity If InstanceNormalization IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
    LpPool MatMul Max MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu
    QuantizeLinear Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
    Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh
    Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
    """.split()
)
_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "LSTM": (1, 2), "Gemm": (1,)}
# ops outside that subset that newer parsers take: op -> (first TensorRT version, source).
# Attention (opset 23) arrived in the ONNX-TensorRT parser of TensorRT 10.14 GA (its release
# notes, 2025-11); before that, and for the opset 9-20 range of TensorRT 10.0-10.13, the
# graph must come from export_onnx(..., target="tensorrt")
TENSORRT_NEWER_OPS = {"Attention": ("10.14", "ONNX-TensorRT 10.14 GA release notes")}
TENSORRT_MAX_OPSET = 20  # TensorRT 10.0's parser: opsets 9 to 20 (docs/operators.md)


def check_tensorrt_ready(path: str | os.PathLike) -> list[str]:
    """Problems TensorRT would have with the graph at ``path`` (empty list: none found)."""
    onnx = require("onnx", extra="export")
    from onnx import helper

    proto = load_model(path)
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    problems = []
    for node in graph.node:
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}")
            continue
        if node.op_type in TENSORRT_NEWER_OPS:
            version, source = TENSORRT_NEWER_OPS[node.op_type]
            problems.append(
                f"{where}: {node.op_type} needs TensorRT >= {version} ({source}); "
                "export with target='tensorrt' (atfnn-fast export --target tensorrt) for "
                "older TensorRT"
            )
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: {node.op_type} is not in the TensorRT support matrix")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "LSTM":
            if attrs.get("layout", 0) != 0:
                problems.append(f"{where}: layout={attrs['layout']} (TensorRT needs layout=0)")
            acts = attrs.get("activations")
            if acts and attrs.get("direction", b"forward") == b"bidirectional":
                half = len(acts) // 2
                if acts[:half] != acts[half:]:
                    problems.append(f"{where}: different activations per direction {acts}")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: uses the Mean / InvStdDev outputs (TensorRT: Y only)")
        for index in _WEIGHT_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                name = node.input[index]
                if name not in initializers and name not in constants:
                    problems.append(f"{where}: weight input {name!r} is not an initializer")
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > TENSORRT_MAX_OPSET:
        problems.append(
            f"opset {opset}: beyond the opsets 9-{TENSORRT_MAX_OPSET} of TensorRT 10.0's parser "
            f"(newer parsers take more; {', '.join(sorted(TENSORRT_NEWER_OPS))} needs "
            f"{min(v for v, _ in TENSORRT_NEWER_OPS.values())})"
        )
    for inp in graph.input:
        if inp.name in initializers:
            continue
        elem = inp.type.tensor_type.elem_type
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            problems.append(
                f"graph input {inp.name!r} has type {onnx.TensorProto.DataType.Name(elem)}"
            )
    return problems


def trtexec_command(
    path: str | os.PathLike, n_mels: int, frames: int, opt_batch: int = 128, max_batch: int = 512
) -> str:
    """The trtexec line that builds a TensorRT engine (dynamic batch 1..max_batch, FP16)."""
    shape = f"{n_mels}x{frames}"
    return (
        f"trtexec --onnx={path} "
        f"--minShapes={INPUT_NAME}:1x1x{shape} "
        f"--optShapes={INPUT_NAME}:{opt_batch}x1x{shape} "
        f"--maxShapes={INPUT_NAME}:{max_batch}x1x{shape} "
        f"--fp16 --saveEngine={os.path.splitext(str(path))[0]}.plan"
    )
