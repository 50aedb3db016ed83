"""ONNX Runtime inference cost of an MLP by batch size: CPU, and CUDA with and without IO binding.

The model is a 64-input MLP (256-256, ReLU, sigmoid output), built here with
``onnx.helper`` and seeded weights so every machine runs the same graph.
For each provider and batch size (1 to 16,384 rows) the script times
``repeat`` calls after a warm-up and prints one JSON line per configuration:
rows/s at the median call time, median and p99 call latency in ms.

CUDA modes: ``run`` (plain ``session.run``: input copied in, every output
copied back), ``iobinding`` (input bound from host memory, only the bound
output copied back: what the worker does on CUDA), ``device`` (input
already on the GPU as an ``OrtValue``: the floor without the host→device copy).

    python bench/gpu_infer.py                # CPU, plus CUDA where available
    python bench/gpu_infer.py --repeat 50 --batches 1 256 16384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

INPUTS, HIDDEN = 64, 256
BATCHES = (1, 4, 16, 64, 256, 1024, 4096, 16384)


def build_mlp(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [INPUTS, HIDDEN, HIDDEN, 1]
    inits, nodes, prev = [], [], "features"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"]))
        act = "Relu" if i < len(dims) - 2 else "Sigmoid"
        nodes.append(helper.make_node(act, [f"h{i}"], [f"a{i}"]))
        prev = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", INPUTS])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", 1])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def time_calls(call, repeat: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    for _ in range(3):
        call()
    out = np.empty(repeat)
    for i in range(repeat):
        t = time.perf_counter()
        call()
        out[i] = time.perf_counter() - t
    return out


def bench(path: Path, provider: str, mode: str, batch: int, repeat: int, threads: int) -> dict[str, object]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=[provider])
    out_name = sess.get_outputs()[0].name
    x = np.random.default_rng(batch).standard_normal((batch, INPUTS)).astype(np.float32)
    if mode == "run":
        def call() -> None:
            sess.run([out_name], {"features": x})
    else:
        device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        binding = sess.io_binding()
        if mode == "device":
            binding.bind_ortvalue_input("features", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
        binding.bind_output(out_name, device)

        def call() -> None:
            if mode == "iobinding":
                binding.bind_cpu_input("features", x)
            sess.run_with_iobinding(binding)
            binding.copy_outputs_to_cpu()
    times = time_calls(call, repeat)
    med = float(np.median(times))
    return {"provider": provider.replace("ExecutionProvider", ""), "mode": mode, "batch": batch,
            "rows_per_s": round(batch / med), "median_ms": round(med * 1000, 4),
            "p99_ms": round(float(np.quantile(times, 0.99)) * 1000, 4), "repeat": repeat, "threads": threads}


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    args = p.parse_args()
    available = ort.get_available_providers()
    configs = [("CPUExecutionProvider", "run"), ("CPUExecutionProvider", "iobinding")]
    if "CUDAExecutionProvider" in available:
        configs += [("CUDAExecutionProvider", m) for m in ("run", "iobinding", "device")]
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    header = {"machine": machine, "onnxruntime": ort.__version__, "providers": available}
    print(json.dumps(header), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.onnx"
        build_mlp(path)
        for provider, mode in configs:
            for batch in args.batches:
                repeat = max(5, min(args.repeat, int(2e6 // batch)))  # keep the big batches short on a CPU
                print(json.dumps(bench(path, provider, mode, batch, repeat, args.threads)), flush=True)


if __name__ == "__main__":
    main()
