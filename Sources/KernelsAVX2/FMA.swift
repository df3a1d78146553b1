// AVX2/FMA kernels (W8A32): Q8_0 weights in the PackedQ8Matrix layout are dequantized a panel chunk at a
// time into f32 and multiplied with f32 activations by a register-blocked FMA micro-kernel.
// This module is compiled for Haswell-class CPUs; Quant calls it only after checking the CPU at run time.
// Pointer-only API: no SIMD values cross the module boundary.
#if arch(x86_64)
import _Builtin_intrinsics.intel

/// Dequantizes `blocks` blocks of one 16-column panel (starting at `w`) into dst [32·blocks][16] f32.
public func avx2DequantizePanel(_ w: UnsafeRawPointer, blocks: Int, into dst: UnsafeMutablePointer<Float>) {
    let bias = _mm256_set1_epi32(128)
    for b in 0..<blocks {
        let blk = w + b * 544
        let d0 = _mm256_cvtph_ps((blk + 512).loadUnaligned(as: __m128i.self)), d1 = _mm256_cvtph_ps((blk + 528).loadUnaligned(as: __m128i.self))
        for g in 0..<8 {
            // 64 bytes: columns 0..15 × 4 consecutive k. Output rows k = 32b + 4g + j, 16 columns each.
            let lo = (blk + 64 * g).loadUnaligned(as: __m256i.self), hi = (blk + 64 * g + 32).loadUnaligned(as: __m256i.self)
            for j in 0..<4 {
                let sh = Int32(8 * j)
                let c0 = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(lo, sh), _mm256_set1_epi32(0xFF)), bias)
                let c1 = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(hi, sh), _mm256_set1_epi32(0xFF)), bias)
                let out = dst + (32 * b + 4 * g + j) * 16
                _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(c0), d0))
                _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c1), d1))
            }
        }
    }
}

/// y[r, 0..<cols] (+)= Σ_k x[r, k] · b[k, 0..<16] for 6 rows (x stride ldx floats, b from
/// avx2DequantizePanel with `depth` rows). Stores only `cols` (≤ 16) columns.
public func avx2Tile6x16(_ x: UnsafePointer<Float>, ldx: Int, b: UnsafePointer<Float>, depth: Int,
                         y: UnsafeMutablePointer<Float>, ldy: Int, cols: Int, accumulate: Bool) {
    var c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps()
    var c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps()
    var c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps()
    let x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx, x4 = x + 4 * ldx, x5 = x + 5 * ldx
    for k in 0..<depth {
        let b0 = _mm256_loadu_ps(b + 16 * k), b1 = _mm256_loadu_ps(b + 16 * k + 8)
        var a = _mm256_set1_ps(x0[k]); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01)
        a = _mm256_set1_ps(x1[k]); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11)
        a = _mm256_set1_ps(x2[k]); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21)
        a = _mm256_set1_ps(x3[k]); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31)
        a = _mm256_set1_ps(x4[k]); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41)
        a = _mm256_set1_ps(x5[k]); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51)
    }
    store2(y, c00, c01, cols, accumulate)
    store2(y + ldy, c10, c11, cols, accumulate)
    store2(y + 2 * ldy, c20, c21, cols, accumulate)
    store2(y + 3 * ldy, c30, c31, cols, accumulate)
    store2(y + 4 * ldy, c40, c41, cols, accumulate)
    store2(y + 5 * ldy, c50, c51, cols, accumulate)
}

/// One row of avx2Tile6x16.
public func avx2Tile1x16(_ x: UnsafePointer<Float>, b: UnsafePointer<Float>, depth: Int,
                         y: UnsafeMutablePointer<Float>, cols: Int, accumulate: Bool) {
    var c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps()
    for k in 0..<depth {
        let a = _mm256_set1_ps(x[k])
        c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(b + 16 * k), c0)
        c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(b + 16 * k + 8), c1)
    }
    store2(y, c0, c1, cols, accumulate)
}

@inline(__always)
func store2(_ y: UnsafeMutablePointer<Float>, _ v0: __m256, _ v1: __m256, _ cols: Int, _ accumulate: Bool) {
    if cols == 16 {
        if accumulate {
            _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), v0))
            _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_loadu_ps(y + 8), v1))
        } else {
            _mm256_storeu_ps(y, v0)
            _mm256_storeu_ps(y + 8, v1)
        }
        return
    }
    var tmp = (v0, v1)
    withUnsafeBytes(of: &tmp) { t in
        let f = t.bindMemory(to: Float.self)
        for c in 0..<cols { y[c] = accumulate ? y[c] + f[c] : f[c] }
    }
}
#endif
