"""Runs inside the rknn-toolkit2 environment (not the server's): build or simulate.

    python rknn_worker.py build MODEL.onnx OUT.rknn PLATFORM
    python rknn_worker.py simulate MODEL.onnx INPUTS.npz OUTPUTS.npz PLATFORM

Imports nothing from Fleetcast, so it runs with the toolkit's own pinned packages.
"""

import sys

import numpy as np
from rknn.api import RKNN


def _input_sizes(model):
    """Input names and shapes, dynamic dimensions fixed to 1 (an RKNN model is static)."""
    import onnx

    graph = onnx.load(model, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    names, sizes = [], []
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        names.append(value.name)
        sizes.append([d.dim_value if d.dim_value > 0 else 1 for d in dims])
    return names, sizes


def _built(model, platform):
    rknn = RKNN(verbose=False)
    if rknn.config(target_platform=platform) != 0:
        sys.exit(f"rknn config failed for platform {platform}")
    names, sizes = _input_sizes(model)
    if rknn.load_onnx(model=model, inputs=names, input_size_list=sizes) != 0:
        sys.exit("rknn-toolkit2 could not load the ONNX model")
    if rknn.build(do_quantization=False) != 0:
        sys.exit("rknn-toolkit2 could not build the model")
    return rknn


def main(argv):
    command = argv[1]
    if command == "build":
        model, out, platform = argv[2:5]
        rknn = _built(model, platform)
        if rknn.export_rknn(out) != 0:
            sys.exit("rknn-toolkit2 could not export the model")
    elif command == "simulate":
        model, inputs_npz, outputs_npz, platform = argv[2:6]
        rknn = _built(model, platform)
        if rknn.init_runtime() != 0:   # no target: the toolkit's simulator on this PC
            sys.exit("the rknn simulator did not start")
        with np.load(inputs_npz) as npz:
            feeds = [npz[k] for k in npz.files]
        outs = rknn.inference(inputs=feeds, data_format="nchw")
        np.savez(outputs_npz, *outs)
    else:
        sys.exit(f"unknown command {command}")
    rknn.release()


if __name__ == "__main__":
    main(sys.argv)
