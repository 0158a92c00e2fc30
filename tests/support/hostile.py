"""Uploads an attacker (or a careless operator) would send: tiny files, unbounded cost."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper


def endless_loop() -> onnx.ModelProto:
    """A few hundred bytes: `Loop` with M = 2^62 iterations that never stops early."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("M", TensorProto.INT64, [], [2**62]),
         helper.make_tensor("cond", TensorProto.BOOL, [], [True])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def huge_constant(gigabytes: float = 1.0) -> onnx.ModelProto:
    """About 150 bytes: `ConstantOfShape` of a shape given at run time, making a huge tensor."""
    elements = int(gigabytes * 1024**3 / 4)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "shape"], ["s"]),
         helper.make_node("ConstantOfShape", ["s"], ["y"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [elements])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def npz_bomb(input_name: str = "input", unpacked_mib: int = 1024) -> bytes:
    """A golden .npz of about 1 MiB that unpacks to `unpacked_mib` MiB of zeros."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (unpacked_mib * 1024**2 // 4 // 16, 16)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(f"input:{input_name}.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = bytes(1024**2)
            for _ in range(unpacked_mib):
                f.write(zeros)
    return buffer.getvalue()
