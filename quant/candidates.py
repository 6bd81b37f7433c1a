"""The precisions a weight-bearing node may take, and what each costs in bytes.

All of them are applied by onnxruntime.quantization (apply_plan.py); this module only names them.
Measured on a 2-core EPYC (MiniLM, 128 tokens; docs/platform-facts.md): int8 dynamic per-channel 0.64x fp32 latency at
embedding cosine 0.991, per-tensor as fast at 0.958, int4 weight-only (MatMulNBits) no faster than
fp32 at 0.966 (it saves bytes only), fp16 weights near-lossless and no faster. The search weighs
exactly these trade-offs per node.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Candidate:
    name: str
    bits: int
    ops: tuple[str, ...]  # op types this candidate can lower
    block_size: int | None = None  # int4 block-wise
    per_channel: bool = False

    def weight_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of one weight at this precision, scales and zero points included."""
        elements = 1
        for dim in shape:
            elements *= dim
        channels = shape[-1] if len(shape) > 1 else 1
        if self.bits == 32:
            return 4 * elements
        if self.bits == 16:
            return 2 * elements
        if self.bits == 8:
            scales = channels if self.per_channel else 1
            return elements + 5 * scales  # int8 values, fp32 scale + int8 zero point per channel
        blocks = -(-elements // (self.block_size or 32))
        return -(-elements // 2) + 4 * blocks  # packed nibbles, one fp32 scale per block (symmetric)


# int8 weights keep 7 bits of magnitude (onnxruntime's reduce_range): x86 CPUs without VNNI multiply
# uint8 activations by int8 weights in pairs summed into 16 bits, which saturates for 8-bit weights,
# while ARM's dot products and onnxruntime-web's WASM kernels compute exactly. With 7-bit weights the
# pair sums cannot saturate, so a variant answers the same on every CPU and in the browser, and the
# thresholds calibrated on one hold on the others (SST-2 MiniLM's full graph, native x86 against
# onnxruntime-web: max probability difference 0.089 with 8-bit weights, 0.0011 with 7).
INT8_WEIGHT_LEVELS = 63

FP32 = Candidate("fp32", 32, ("MatMul", "Gemm", "Gather"))
FP16 = Candidate("fp16", 16, ("MatMul", "Gemm", "Gather"))
INT8_CHANNEL = Candidate("int8-channel", 8, ("MatMul", "Gemm", "Gather"), per_channel=True)
INT8_TENSOR = Candidate("int8-tensor", 8, ("MatMul", "Gemm", "Gather"))
INT4_B32 = Candidate("int4-b32", 4, ("MatMul", "Gather"), block_size=32)
INT4_B128 = Candidate("int4-b128", 4, ("MatMul", "Gather"), block_size=128)

CANDIDATES: tuple[Candidate, ...] = (FP32, FP16, INT8_CHANNEL, INT8_TENSOR, INT4_B32, INT4_B128)
BY_NAME = {c.name: c for c in CANDIDATES}


def for_op(name: str, op_type: str) -> str:
    """The precision a node of this op type takes when a plan asks for `name`: int4 has no Gemm
    kernel, so such nodes take int8 per-channel (and anything without a kernel stays fp32)."""
    if op_type in BY_NAME[name].ops:
        return name
    return "int8-channel" if BY_NAME[name].bits < 8 else "fp32"


def candidate(name: str) -> Candidate:
    if name not in BY_NAME:
        raise InputError(f"unknown precision {name!r}; choose one of {', '.join(BY_NAME)}")
    return BY_NAME[name]
