// AVX-512 VNNI kernels (W8A8): Q8_0 weights in the PackedQ8Matrix layout times int8 activations.
// This module is compiled for a VNNI-capable CPU; Quant calls it only after checking the CPU at run time.
// Pointer-only API: no SIMD values cross the module boundary (callers may be compiled for other CPUs).
#if arch(x86_64)
import _Builtin_intrinsics.intel

/// Quantizes `rows` rows of `cols` f32 (cols a multiple of 32) to int8 blocks of 32, as ggml's Q8_0:
/// d = max|x| / 127, q = x / d rounded to nearest (ties to even). Writes q [rows, ldq], the scales
/// d [rows, lds] and 128 · Σq per block [rows, lds] (the correction for the weights' +128 offset).
public func vnniQuantizeRows(_ x: UnsafePointer<Float>, ldx: Int, rows: Int, cols: Int,
                             q: UnsafeMutablePointer<Int8>, ldq: Int,
                             scale: UnsafeMutablePointer<Float>, sum128: UnsafeMutablePointer<Int32>, lds: Int) {
    let blocks = cols / 32
    for r in 0..<rows {
        let xr = x + r * ldx
        for b in 0..<blocks {
            let v0 = _mm512_loadu_ps(xr + 32 * b), v1 = _mm512_loadu_ps(xr + 32 * b + 16)
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)))
            let d = amax / 127
            let id: Float = d > 0 ? 1 / d : 0
            let m = _mm512_set1_ps(id)
            let i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, m)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, m))
            let out = UnsafeMutableRawPointer(q + r * ldq + 32 * b)
            out.storeBytes(of: _mm512_cvtsepi32_epi8(i0), as: __m128i.self)
            (out + 16).storeBytes(of: _mm512_cvtsepi32_epi8(i1), as: __m128i.self)
            scale[r * lds + b] = d
            sum128[r * lds + b] = 128 &* _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1))
        }
    }
}

@inline(__always)
func broadcast4(_ p: UnsafePointer<Int8>) -> __m512i {
    _mm512_set1_epi32(UnsafeRawPointer(p).loadUnaligned(as: Int32.self))
}

@inline(__always)
func masks(_ cols: Int) -> (UInt16, UInt16) {
    let m0: UInt16 = cols >= 16 ? 0xFFFF : UInt16((1 << cols) - 1)
    let m1: UInt16 = cols >= 32 ? 0xFFFF : (cols > 16 ? UInt16((1 << (cols - 16)) - 1) : 0)
    return (m0, m1)
}

/// y[r, 0..<cols] (+)= Σ_b xs[r,b] · d[c,b] · (Σ_k (w[c,k] + 128) · x[r,k] − 128 · Σ_k x[r,k])
/// for 4 rows and one panel pair (32 output columns, `cols` of them stored).
/// x: int8 rows (stride ldx bytes) at the first block; xs, xsum: per-block scale and 128·Σq (stride lds);
/// w: the first panel at the first block; the second panel starts `panelStride` bytes later.
public func vnniTile4x32(_ x: UnsafePointer<Int8>, ldx: Int, xs: UnsafePointer<Float>, xsum: UnsafePointer<Int32>,
                         lds: Int, w: UnsafeRawPointer, panelStride: Int, blocks: Int,
                         y: UnsafeMutablePointer<Float>, ldy: Int, cols: Int, accumulate: Bool) {
    let (m0, m1) = masks(cols)
    var f00 = _mm512_setzero_ps(), f01 = _mm512_setzero_ps(), f10 = _mm512_setzero_ps(), f11 = _mm512_setzero_ps()
    var f20 = _mm512_setzero_ps(), f21 = _mm512_setzero_ps(), f30 = _mm512_setzero_ps(), f31 = _mm512_setzero_ps()
    if accumulate {
        f00 = _mm512_maskz_loadu_ps(m0, y); f01 = _mm512_maskz_loadu_ps(m1, y + 16)
        f10 = _mm512_maskz_loadu_ps(m0, y + ldy); f11 = _mm512_maskz_loadu_ps(m1, y + ldy + 16)
        f20 = _mm512_maskz_loadu_ps(m0, y + 2 * ldy); f21 = _mm512_maskz_loadu_ps(m1, y + 2 * ldy + 16)
        f30 = _mm512_maskz_loadu_ps(m0, y + 3 * ldy); f31 = _mm512_maskz_loadu_ps(m1, y + 3 * ldy + 16)
    }
    let x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx
    for b in 0..<blocks {
        let w0 = w + b * 544, w1 = w + panelStride + b * 544
        var i00 = _mm512_setzero_si512(), i01 = _mm512_setzero_si512(), i10 = _mm512_setzero_si512(), i11 = _mm512_setzero_si512()
        var i20 = _mm512_setzero_si512(), i21 = _mm512_setzero_si512(), i30 = _mm512_setzero_si512(), i31 = _mm512_setzero_si512()
        let k = 32 * b
        for g in 0..<8 {
            let b0 = _mm512_loadu_si512(w0 + 64 * g), b1 = _mm512_loadu_si512(w1 + 64 * g)
            let a0 = broadcast4(x0 + k + 4 * g)
            i00 = _mm512_dpbusd_epi32(i00, b0, a0); i01 = _mm512_dpbusd_epi32(i01, b1, a0)
            let a1 = broadcast4(x1 + k + 4 * g)
            i10 = _mm512_dpbusd_epi32(i10, b0, a1); i11 = _mm512_dpbusd_epi32(i11, b1, a1)
            let a2 = broadcast4(x2 + k + 4 * g)
            i20 = _mm512_dpbusd_epi32(i20, b0, a2); i21 = _mm512_dpbusd_epi32(i21, b1, a2)
            let a3 = broadcast4(x3 + k + 4 * g)
            i30 = _mm512_dpbusd_epi32(i30, b0, a3); i31 = _mm512_dpbusd_epi32(i31, b1, a3)
        }
        let d0 = _mm512_cvtph_ps((w0 + 512).loadUnaligned(as: __m256i.self)), d1 = _mm512_cvtph_ps((w1 + 512).loadUnaligned(as: __m256i.self))
        var s = _mm512_set1_ps(xs[b]); var c = _mm512_set1_epi32(xsum[b])
        f00 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i00, c)), _mm512_mul_ps(d0, s), f00)
        f01 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i01, c)), _mm512_mul_ps(d1, s), f01)
        s = _mm512_set1_ps(xs[lds + b]); c = _mm512_set1_epi32(xsum[lds + b])
        f10 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i10, c)), _mm512_mul_ps(d0, s), f10)
        f11 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i11, c)), _mm512_mul_ps(d1, s), f11)
        s = _mm512_set1_ps(xs[2 * lds + b]); c = _mm512_set1_epi32(xsum[2 * lds + b])
        f20 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i20, c)), _mm512_mul_ps(d0, s), f20)
        f21 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i21, c)), _mm512_mul_ps(d1, s), f21)
        s = _mm512_set1_ps(xs[3 * lds + b]); c = _mm512_set1_epi32(xsum[3 * lds + b])
        f30 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i30, c)), _mm512_mul_ps(d0, s), f30)
        f31 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(i31, c)), _mm512_mul_ps(d1, s), f31)
    }
    _mm512_mask_storeu_ps(y, m0, f00); _mm512_mask_storeu_ps(y + 16, m1, f01)
    _mm512_mask_storeu_ps(y + ldy, m0, f10); _mm512_mask_storeu_ps(y + ldy + 16, m1, f11)
    _mm512_mask_storeu_ps(y + 2 * ldy, m0, f20); _mm512_mask_storeu_ps(y + 2 * ldy + 16, m1, f21)
    _mm512_mask_storeu_ps(y + 3 * ldy, m0, f30); _mm512_mask_storeu_ps(y + 3 * ldy + 16, m1, f31)
}

/// One row of `vnniTile4x32` (for the rows left over when the row count is not a multiple of 4).
public func vnniTile1x32(_ x: UnsafePointer<Int8>, xs: UnsafePointer<Float>, xsum: UnsafePointer<Int32>,
                         w: UnsafeRawPointer, panelStride: Int, blocks: Int,
                         y: UnsafeMutablePointer<Float>, cols: Int, accumulate: Bool) {
    let (m0, m1) = masks(cols)
    var f0 = accumulate ? _mm512_maskz_loadu_ps(m0, y) : _mm512_setzero_ps()
    var f1 = accumulate ? _mm512_maskz_loadu_ps(m1, y + 16) : _mm512_setzero_ps()
    for b in 0..<blocks {
        let w0 = w + b * 544, w1 = w + panelStride + b * 544
        var i0 = _mm512_setzero_si512(), i1 = _mm512_setzero_si512()
        var j0 = _mm512_setzero_si512(), j1 = _mm512_setzero_si512()
        for g in stride(from: 0, to: 8, by: 2) {
            let a = broadcast4(x + 32 * b + 4 * g), a2 = broadcast4(x + 32 * b + 4 * g + 4)
            i0 = _mm512_dpbusd_epi32(i0, _mm512_loadu_si512(w0 + 64 * g), a)
            i1 = _mm512_dpbusd_epi32(i1, _mm512_loadu_si512(w1 + 64 * g), a)
            j0 = _mm512_dpbusd_epi32(j0, _mm512_loadu_si512(w0 + 64 * g + 64), a2)
            j1 = _mm512_dpbusd_epi32(j1, _mm512_loadu_si512(w1 + 64 * g + 64), a2)
        }
        let d0 = _mm512_cvtph_ps((w0 + 512).loadUnaligned(as: __m256i.self)), d1 = _mm512_cvtph_ps((w1 + 512).loadUnaligned(as: __m256i.self))
        let s = _mm512_set1_ps(xs[b]), c = _mm512_set1_epi32(xsum[b])
        f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(i0, j0), c)), _mm512_mul_ps(d0, s), f0)
        f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(i1, j1), c)), _mm512_mul_ps(d1, s), f1)
    }
    _mm512_mask_storeu_ps(y, m0, f0)
    _mm512_mask_storeu_ps(y + 16, m1, f1)
}
#endif

#if arch(x86_64)
// MARK: - W8A16: activations quantized to 16 bits per 32, split into a signed high byte and a low byte,
// each multiplied with the int8 weights by vpdpbusd (two products per weight instead of one).
//
// q = round(x / d), d = max|x| / 32767;  hi = q >> 8 (s8),  lo = (q & 255) − 128 (s8), so q = 256·hi + lo + 128.
// With weights stored as u = w + 128:  Σ w·q = 256·Σ u·hi + Σ u·lo − 128·(256·Σhi + Σlo) + 128·Σw,
// and Σw = Σu − 4096 comes from one more vpdpbusd of the weights with ones.

/// Quantizes rows to 16-bit blocks of 32: writes hi and lo bytes [rows, ldq], the scales d and the row
/// correction 128·(256·Σhi + Σlo) − 128·4096·... per block [rows, lds] (see the formula above).
public func vnni16QuantizeRows(_ x: UnsafePointer<Float>, ldx: Int, rows: Int, cols: Int,
                               hi: UnsafeMutablePointer<Int8>, lo: UnsafeMutablePointer<Int8>, ldq: Int,
                               scale: UnsafeMutablePointer<Float>, correction: UnsafeMutablePointer<Int32>, lds: Int) {
    let blocks = cols / 32
    let mask = _mm512_set1_epi32(255), bias = _mm512_set1_epi32(128)
    for r in 0..<rows {
        let xr = x + r * ldx
        for b in 0..<blocks {
            let v0 = _mm512_loadu_ps(xr + 32 * b), v1 = _mm512_loadu_ps(xr + 32 * b + 16)
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)))
            let d = amax / 32767
            let id: Float = d > 0 ? 1 / d : 0
            let m = _mm512_set1_ps(id)
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, m)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, m))
            let h0 = _mm512_srai_epi32(q0, 8), h1 = _mm512_srai_epi32(q1, 8)
            let l0 = _mm512_sub_epi32(_mm512_and_si512(q0, mask), bias), l1 = _mm512_sub_epi32(_mm512_and_si512(q1, mask), bias)
            let ho = UnsafeMutableRawPointer(hi + r * ldq + 32 * b), lp = UnsafeMutableRawPointer(lo + r * ldq + 32 * b)
            ho.storeBytes(of: _mm512_cvtepi32_epi8(h0), as: __m128i.self)
            (ho + 16).storeBytes(of: _mm512_cvtepi32_epi8(h1), as: __m128i.self)
            lp.storeBytes(of: _mm512_cvtepi32_epi8(l0), as: __m128i.self)
            (lp + 16).storeBytes(of: _mm512_cvtepi32_epi8(l1), as: __m128i.self)
            let sh = _mm512_reduce_add_epi32(_mm512_add_epi32(h0, h1)), sl = _mm512_reduce_add_epi32(_mm512_add_epi32(l0, l1))
            scale[r * lds + b] = d
            correction[r * lds + b] = 128 &* (256 &* sh &+ sl)
        }
    }
}

/// The W8A16 counterpart of vnniTile4x32 (hi/lo activation bytes, per-block correction).
public func vnni16Tile4x32(_ hi: UnsafePointer<Int8>, _ lo: UnsafePointer<Int8>, ldx: Int, xs: UnsafePointer<Float>,
                           corr: UnsafePointer<Int32>, lds: Int, w: UnsafeRawPointer, panelStride: Int, blocks: Int,
                           y: UnsafeMutablePointer<Float>, ldy: Int, cols: Int, accumulate: Bool) {
    let (m0, m1) = masks(cols)
    let ones = _mm512_set1_epi8(1)
    var f00 = _mm512_setzero_ps(), f01 = _mm512_setzero_ps(), f10 = _mm512_setzero_ps(), f11 = _mm512_setzero_ps()
    var f20 = _mm512_setzero_ps(), f21 = _mm512_setzero_ps(), f30 = _mm512_setzero_ps(), f31 = _mm512_setzero_ps()
    if accumulate {
        f00 = _mm512_maskz_loadu_ps(m0, y); f01 = _mm512_maskz_loadu_ps(m1, y + 16)
        f10 = _mm512_maskz_loadu_ps(m0, y + ldy); f11 = _mm512_maskz_loadu_ps(m1, y + ldy + 16)
        f20 = _mm512_maskz_loadu_ps(m0, y + 2 * ldy); f21 = _mm512_maskz_loadu_ps(m1, y + 2 * ldy + 16)
        f30 = _mm512_maskz_loadu_ps(m0, y + 3 * ldy); f31 = _mm512_maskz_loadu_ps(m1, y + 3 * ldy + 16)
    }
    for b in 0..<blocks {
        let w0 = w + b * 544, w1 = w + panelStride + b * 544
        var h00 = _mm512_setzero_si512(), h01 = _mm512_setzero_si512(), h10 = _mm512_setzero_si512(), h11 = _mm512_setzero_si512()
        var h20 = _mm512_setzero_si512(), h21 = _mm512_setzero_si512(), h30 = _mm512_setzero_si512(), h31 = _mm512_setzero_si512()
        var l00 = _mm512_setzero_si512(), l01 = _mm512_setzero_si512(), l10 = _mm512_setzero_si512(), l11 = _mm512_setzero_si512()
        var l20 = _mm512_setzero_si512(), l21 = _mm512_setzero_si512(), l30 = _mm512_setzero_si512(), l31 = _mm512_setzero_si512()
        var s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512()
        let k = 32 * b
        for g in 0..<8 {
            let b0 = _mm512_loadu_si512(w0 + 64 * g), b1 = _mm512_loadu_si512(w1 + 64 * g)
            s0 = _mm512_dpbusd_epi32(s0, b0, ones); s1 = _mm512_dpbusd_epi32(s1, b1, ones)
            let o = k + 4 * g
            var a = broadcast4(hi + o)
            h00 = _mm512_dpbusd_epi32(h00, b0, a); h01 = _mm512_dpbusd_epi32(h01, b1, a)
            a = broadcast4(lo + o)
            l00 = _mm512_dpbusd_epi32(l00, b0, a); l01 = _mm512_dpbusd_epi32(l01, b1, a)
            a = broadcast4(hi + ldx + o)
            h10 = _mm512_dpbusd_epi32(h10, b0, a); h11 = _mm512_dpbusd_epi32(h11, b1, a)
            a = broadcast4(lo + ldx + o)
            l10 = _mm512_dpbusd_epi32(l10, b0, a); l11 = _mm512_dpbusd_epi32(l11, b1, a)
            a = broadcast4(hi + 2 * ldx + o)
            h20 = _mm512_dpbusd_epi32(h20, b0, a); h21 = _mm512_dpbusd_epi32(h21, b1, a)
            a = broadcast4(lo + 2 * ldx + o)
            l20 = _mm512_dpbusd_epi32(l20, b0, a); l21 = _mm512_dpbusd_epi32(l21, b1, a)
            a = broadcast4(hi + 3 * ldx + o)
            h30 = _mm512_dpbusd_epi32(h30, b0, a); h31 = _mm512_dpbusd_epi32(h31, b1, a)
            a = broadcast4(lo + 3 * ldx + o)
            l30 = _mm512_dpbusd_epi32(l30, b0, a); l31 = _mm512_dpbusd_epi32(l31, b1, a)
        }
        // 128·Σw per column = 128·(Σu − 4096).
        let sw0 = _mm512_slli_epi32(_mm512_sub_epi32(s0, _mm512_set1_epi32(4096)), 7)
        let sw1 = _mm512_slli_epi32(_mm512_sub_epi32(s1, _mm512_set1_epi32(4096)), 7)
        let d0 = _mm512_cvtph_ps(UnsafeRawPointer(w0 + 512).loadUnaligned(as: __m256i.self))
        let d1 = _mm512_cvtph_ps(UnsafeRawPointer(w1 + 512).loadUnaligned(as: __m256i.self))
        @inline(__always) func combine(_ h: __m512i, _ l: __m512i, _ sw: __m512i, _ c: __m512i) -> __m512 {
            _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h, 8), l), c), sw))
        }
        var s = _mm512_set1_ps(xs[b]); var c = _mm512_set1_epi32(corr[b])
        f00 = _mm512_fmadd_ps(combine(h00, l00, sw0, c), _mm512_mul_ps(d0, s), f00)
        f01 = _mm512_fmadd_ps(combine(h01, l01, sw1, c), _mm512_mul_ps(d1, s), f01)
        s = _mm512_set1_ps(xs[lds + b]); c = _mm512_set1_epi32(corr[lds + b])
        f10 = _mm512_fmadd_ps(combine(h10, l10, sw0, c), _mm512_mul_ps(d0, s), f10)
        f11 = _mm512_fmadd_ps(combine(h11, l11, sw1, c), _mm512_mul_ps(d1, s), f11)
        s = _mm512_set1_ps(xs[2 * lds + b]); c = _mm512_set1_epi32(corr[2 * lds + b])
        f20 = _mm512_fmadd_ps(combine(h20, l20, sw0, c), _mm512_mul_ps(d0, s), f20)
        f21 = _mm512_fmadd_ps(combine(h21, l21, sw1, c), _mm512_mul_ps(d1, s), f21)
        s = _mm512_set1_ps(xs[3 * lds + b]); c = _mm512_set1_epi32(corr[3 * lds + b])
        f30 = _mm512_fmadd_ps(combine(h30, l30, sw0, c), _mm512_mul_ps(d0, s), f30)
        f31 = _mm512_fmadd_ps(combine(h31, l31, sw1, c), _mm512_mul_ps(d1, s), f31)
    }
    _mm512_mask_storeu_ps(y, m0, f00); _mm512_mask_storeu_ps(y + 16, m1, f01)
    _mm512_mask_storeu_ps(y + ldy, m0, f10); _mm512_mask_storeu_ps(y + ldy + 16, m1, f11)
    _mm512_mask_storeu_ps(y + 2 * ldy, m0, f20); _mm512_mask_storeu_ps(y + 2 * ldy + 16, m1, f21)
    _mm512_mask_storeu_ps(y + 3 * ldy, m0, f30); _mm512_mask_storeu_ps(y + 3 * ldy + 16, m1, f31)
}

/// One row of vnni16Tile4x32.
public func vnni16Tile1x32(_ hi: UnsafePointer<Int8>, _ lo: UnsafePointer<Int8>, xs: UnsafePointer<Float>,
                           corr: UnsafePointer<Int32>, w: UnsafeRawPointer, panelStride: Int, blocks: Int,
                           y: UnsafeMutablePointer<Float>, cols: Int, accumulate: Bool) {
    let (m0, m1) = masks(cols)
    let ones = _mm512_set1_epi8(1)
    var f0 = accumulate ? _mm512_maskz_loadu_ps(m0, y) : _mm512_setzero_ps()
    var f1 = accumulate ? _mm512_maskz_loadu_ps(m1, y + 16) : _mm512_setzero_ps()
    for b in 0..<blocks {
        let w0 = w + b * 544, w1 = w + panelStride + b * 544
        var h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512(), l0 = _mm512_setzero_si512(), l1 = _mm512_setzero_si512()
        var s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512()
        for g in 0..<8 {
            let b0 = _mm512_loadu_si512(w0 + 64 * g), b1 = _mm512_loadu_si512(w1 + 64 * g)
            s0 = _mm512_dpbusd_epi32(s0, b0, ones); s1 = _mm512_dpbusd_epi32(s1, b1, ones)
            let ah = broadcast4(hi + 32 * b + 4 * g), al = broadcast4(lo + 32 * b + 4 * g)
            h0 = _mm512_dpbusd_epi32(h0, b0, ah); h1 = _mm512_dpbusd_epi32(h1, b1, ah)
            l0 = _mm512_dpbusd_epi32(l0, b0, al); l1 = _mm512_dpbusd_epi32(l1, b1, al)
        }
        let sw0 = _mm512_slli_epi32(_mm512_sub_epi32(s0, _mm512_set1_epi32(4096)), 7)
        let sw1 = _mm512_slli_epi32(_mm512_sub_epi32(s1, _mm512_set1_epi32(4096)), 7)
        let d0 = _mm512_cvtph_ps(UnsafeRawPointer(w0 + 512).loadUnaligned(as: __m256i.self))
        let d1 = _mm512_cvtph_ps(UnsafeRawPointer(w1 + 512).loadUnaligned(as: __m256i.self))
        let s = _mm512_set1_ps(xs[b]), c = _mm512_set1_epi32(corr[b])
        let t0 = _mm512_add_epi32(_mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h0, 8), l0), c), sw0)
        let t1 = _mm512_add_epi32(_mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h1, 8), l1), c), sw1)
        f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), _mm512_mul_ps(d0, s), f0)
        f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t1), _mm512_mul_ps(d1, s), f1)
    }
    _mm512_mask_storeu_ps(y, m0, f0)
    _mm512_mask_storeu_ps(y + 16, m1, f1)
}
#endif
