"""From ONNX to compiled kernels: the Relax import and fusion (relax), length buckets (lengths), the int8
rewrite (int8, requantize, lookup, transposes) and the CPU schedules (schedules, intrinsics)."""
