"""edgeinfer is a guest in its host's process: the host's own onnxruntime sessions work before and
after edgeinfer has run, with onnxruntime's default options."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HOST = textwrap.dedent("""
    import sys
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def plain_session():
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "host",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist()

    import edgeinfer
    assert plain_session() == [0.0, 2.0]
    for policy in (edgeinfer.Policy.off(), edgeinfer.Policy(agreement=0.95)):
        edgeinfer.load(sys.argv[1], policy=policy).run(["good movie", "a long and dull plot"])
    assert plain_session() == [0.0, 2.0]
    print("host sessions fine")
""")


def test_host_sessions_work_before_and_after_edgeinfer_runs(tiny_packages):
    package = tiny_packages[("bert", "text-classification")]
    done = subprocess.run([sys.executable, "-c", HOST, str(package)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "host sessions fine" in done.stdout
