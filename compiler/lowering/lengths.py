"""Any input length: a library built from a --dynamic export holds one Relax function per length bucket
(12 or 16, 20, 24, 32, 40, 48, 64, 96, ... up to the export's --seq-len, below), all sharing one copy of
the weights; an input of L tokens runs in the smallest bucket that holds it, padded with the attention
mask's zeros.

The ladder steps by 4/3 and 3/2 (powers of two and their midpoints), plus 10, 14, 18, 20, 36 and 40 where
real text lives, keeping the lengths that are a whole number of the target's vectors: 12, 16, 20, 24, 32,
36, 40, 48, 64, 96 on NEON (4 lanes; int8 on aarch64 takes 10, 14 and 18 too, its attention's keys padded to
a multiple of 4 inside the packed matmuls: A76 static 10 / 14 / 18 tokens 25.4 / 33.5 / 45.1 M where 12 /
16 / 20 take ~30 / 37.4 / ~51), 16, 24, 32, 40, 48, ... on AVX2 (8), 16, 32, 48, 64, 96 on AVX-512 (16; a
12-token bucket there ran slower than 16: its attention matmuls leave the packed kernel and its row tiles
shrink), 16, 32, 48, ... on a GPU. Every layer's work grows with the bucket, so padding is work: on the
held-out texts (median 14 tokens, 5..40) the old 16/32/64 ladder ran a text at 20.0 tokens on average,
NEON's at 17.4 without 20 and 40 and at 16.7 with them (the texts' own mean is 14.9). Each bucket is
another copy of every kernel (compile time and ~0.7 MB of code at full size; the weights are shared,
below). results/PERFORMANCE-LOG.md 46, 48 and 53.
"""

from __future__ import annotations

from squeezeedge.errors import InputError

FIRST_BUCKET = 16  # real text here: median 14 tokens, p90 18 (calibration/sentences.txt)


# where real text lives, a step of 1.25 more: 20 and 40 (17-18 and 33-40 tokens padded 4 and 8 less), 36
# (33-36 tokens); 10, 14 and 18 where buckets may be even (aarch64 int8,
# :func:`squeezeedge.lowering.pipeline.bucket_lengths`): of the 64 held-out texts 6 are 5-10 tokens, 25 are
# 13-14 and 3 are 17-18
QUARTER_STEPS = (10, 14, 18, 20, 36, 40)


def buckets(max_len: int, dynamic: bool, multiple: int = 4) -> list[int]:
    """Bucket lengths, ascending, the last being ``max_len``: those of 10, 12, 14, 16, 18, 20, 24, 32, 36, 40,
    48, 64, 96, ... (powers of two, their midpoints and :data:`QUARTER_STEPS`) below it that are multiples of
    ``multiple`` (the target's vector lanes). A static export has one: its own length."""
    if not dynamic:
        return [max_len]
    ladder, n = list(QUARTER_STEPS), 12
    while n < max_len:
        ladder.append(n)
        n = n * 4 // 3 if n & (n - 1) else n * 3 // 2  # 12 -> 16 -> 24 -> 32 -> 48 -> 64 ...
    return sorted(b for b in ladder if b < max_len and b % multiple == 0) + [max_len]


def function_name(length: int, lengths: list[int]) -> str:
    """The Relax function of a bucket: ``main`` for the longest (what a one-length library calls), else
    ``main_<length>``."""
    return "main" if length == lengths[-1] else f"main_{length}"


def bucket_for(length: int, lengths: list[int]) -> int:
    """The smallest bucket holding ``length`` tokens; InputError naming the maximum past it."""
    if length < 1:
        raise InputError("the input has no tokens")
    for b in lengths:
        if length <= b:
            return b
    raise InputError(f"the input has {length} tokens; this library takes at most {lengths[-1]} "
                     "(truncate the text, or ask for truncation)")


def pad(arrays: list, length: int):
    """Arrays [B, L] zero-padded along the sequence axis to [B, length] (id 0 = [PAD], mask 0, type 0)."""
    import numpy as np

    out = []
    for a in arrays:
        if a.shape[1] == length:
            out.append(a)
            continue
        p = np.zeros((a.shape[0], length), dtype=a.dtype)
        p[:, :a.shape[1]] = a
        out.append(p)
    return out


def merge(mods: dict[int, object], lengths: list[int]):
    """One IRModule from per-bucket modules (each with its ``main`` and the kernels its passes added):
    each bucket's ``main`` renamed to :func:`function_name`, its other functions suffixed ``_s<length>`` so
    that equal names from different buckets do not collide."""
    from tvm import relax

    if len(lengths) == 1:
        return mods[lengths[0]]

    @relax.expr_functor.mutator
    class Rename(relax.PyExprMutator):
        def __init__(self, mapping):
            super().__init__()
            self.mapping = mapping

        def visit_global_var_(self, op):
            return self.mapping.get(op.name_hint, op)

    builder = relax.BlockBuilder()  # types each renamed GlobalVar as call_tir needs
    for n in lengths:
        mod, mapping = mods[n], {}
        kernels_first = sorted(mod.functions.items(), key=lambda item: isinstance(item[1], relax.Function))
        for gv, func in kernels_first:
            name = function_name(n, lengths) if gv.name_hint == "main" else f"{gv.name_hint}_s{n}"
            if isinstance(func, relax.Function):
                func = Rename(mapping).visit_expr(func)
            if func.attrs is not None and "global_symbol" in func.attrs:
                func = func.with_attr("global_symbol", name)
            mapping[gv.name_hint] = builder.add_func(func, name)
    return builder.get()
