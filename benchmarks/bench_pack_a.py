"""How much packing A (BLIS's MR-row micro-panels) could gain the GEMM, before paying for the packing.

    python benchmarks/bench_pack_a.py

One core, the AVX-512 14 x 32 block: the loop nest over weight panels and row tiles of one
MC x KC block of activations (224 rows), as ``kernels._gemm`` runs it, with the activations read
in place by ``kernels._make_microkernel`` against the same loop on activations already packed
into micro-panels (an unmasked variant of the micro-kernel that reads them as one stream). The
packing itself is not timed: the "packed" rate is an upper bound. Best of 5, GFLOP/s.
"""
import time

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic
from convnext_np import kernels
from convnext_np.kernels import _VectorIR

def make_packed(lanes, mr, nr):
    nvec = nr // lanes
    @intrinsic
    def mk(typingctx, kc, a, b, ldb, c, ldc):
        sig = types.void(*(types.intp,) * 6)
        def codegen(context, builder, signature, args):
            kc, a, b, ldb, c, ldc = args
            v = _VectorIR(builder, lanes, kc.type); const = v.const
            full = v.lanes_below(const(lanes))
            a_base, b_base, c_base = (v.pointer(x) for x in (a, b, c))
            c_ptrs, init = [], []
            for i in range(mr):
                row = v.at(c_base, builder.mul(const(i), ldc))
                for j in range(nvec):
                    p = v.at(row, const(j * lanes)); c_ptrs.append(p); init.append(v.load(p, full))
            entry = builder.block
            loop = builder.append_basic_block("l"); done = builder.append_basic_block("d")
            builder.branch(loop); builder.position_at_end(loop)
            k = builder.phi(kc.type); acc = [builder.phi(v.vec) for _ in init]
            b_row = v.at(b_base, builder.mul(k, ldb))
            for off in range(0, nr, 16):
                v.prefetch(v.at(v.at(b_row, builder.mul(const(64), ldb)), const(off)))
            w = [v.load(v.at(b_row, const(j * lanes)), full) for j in range(nvec)]
            a_k = v.at(a_base, builder.mul(k, const(mr)))
            new = []
            for i in range(mr):
                x = v.broadcast(v.at(a_k, const(i)))
                new += [v.fma(x, w[j], acc[i * nvec + j]) for j in range(nvec)]
            kn = builder.add(k, const(1)); end = builder.block
            k.add_incoming(const(0), entry); k.add_incoming(kn, end)
            for phi, f, l in zip(acc, init, new):
                phi.add_incoming(f, entry); phi.add_incoming(l, end)
            builder.cbranch(builder.icmp_signed("<", kn, kc), loop, done)
            builder.position_at_end(done)
            for val, p in zip(new, c_ptrs):
                v.store(val, p, full)
            return context.get_dummy_value()
        return sig, codegen
    return mk

mr, nr = 14, 32
mkp = make_packed(16, mr, nr)
mku = kernels._make_microkernel(16, mr, nr)

@numba.njit
def run_unpacked(a, panels, c, reps):
    m, kc = a.shape
    npan = panels.shape[0]
    for _ in range(reps):
        for jp in range(npan):
            for i in range(0, m, mr):
                mku(kc, a.ctypes.data + 4 * i * kc, kc, panels.ctypes.data + 4 * jp * kc * nr, nr,
                    c.ctypes.data + 4 * (i * c.shape[1] + jp * nr), c.shape[1], mr, nr, 1)

@numba.njit
def run_packed(ap, panels, c, reps):
    nt, kc, _ = ap.shape
    npan = panels.shape[0]
    for _ in range(reps):
        for jp in range(npan):
            for t in range(nt):
                mkp(kc, ap.ctypes.data + 4 * t * kc * mr, panels.ctypes.data + 4 * jp * kc * nr, nr,
                    c.ctypes.data + 4 * (t * mr * c.shape[1] + jp * nr), c.shape[1])

for kc, n in [(96, 384), (256, 96), (256, 768), (256, 3072)]:
    m = 224
    a = np.random.rand(m, kc).astype(np.float32)
    ap = np.ascontiguousarray(a.reshape(m // mr, mr, kc).transpose(0, 2, 1))
    panels = (np.random.rand(n // nr, kc, nr).astype(np.float32) * 1e-3)
    c = np.zeros((m, n), np.float32)
    reps = max(1, int(2e9 / (2 * m * kc * n)))
    res = {}
    for name, f, arg in [("in place", run_unpacked, a), ("packed", run_packed, ap)]:
        f(arg, panels, c, 1)
        best = 1e9
        for _ in range(5):
            t = time.perf_counter(); f(arg, panels, c, reps); best = min(best, time.perf_counter() - t)
        res[name] = 2 * m * kc * n * reps / best / 1e9
    print(f"MC {m} x KC {kc}, N {n}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in res.items()))
