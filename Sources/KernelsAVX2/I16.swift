// AVX2 integer kernels (W8A16): activations quantized to 16 bits per block of 32 (d = max|x| / 32767), weights
// widened from int8 to int16 once per panel chunk, products summed by `vpmaddwd` (two 16×16-bit products per
// 32-bit lane) into int32 per block, then scaled into f32. Fidelity is that of the weights alone (as the
// avx512vnni-a16 kernel); `vpmaddwd` + `vpaddd` do 16 multiply-adds in two integer instructions, which run
// beside each other on more ports than f32 FMA has.
// Pointer-only API: no SIMD values cross the module boundary.
#if arch(x86_64)
import _Builtin_intrinsics.intel

/// Quantizes rows to int16 per block of 32: q[r, k] = round(x[r, k] / d[r, b]), d = max|x| / 32767 over the block.
public func avx2QuantizeRows16(_ x: UnsafePointer<Float>, ldx: Int, rows: Int, cols: Int,
                               q: UnsafeMutablePointer<Int16>, ldq: Int, scale: UnsafeMutablePointer<Float>, lds: Int) {
    let blocks = cols / 32
    let absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))
    let swapHalves = _mm256_setr_epi32(4, 5, 6, 7, 0, 1, 2, 3), swapPairs = _mm256_setr_epi32(2, 3, 0, 1, 6, 7, 4, 5)
    let swapNeighbours = _mm256_setr_epi32(1, 0, 3, 2, 5, 4, 7, 6), quads0213 = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7)
    for r in 0..<rows {
        let xr = x + r * ldx
        for b in 0..<blocks {
            let p = xr + 32 * b
            let v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24)
            var m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absMask), _mm256_and_ps(v1, absMask)),
                                  _mm256_max_ps(_mm256_and_ps(v2, absMask), _mm256_and_ps(v3, absMask)))
            // (the immediate-operand shuffles are C macros, not callable from Swift: variable permutes instead)
            m = _mm256_max_ps(m, _mm256_permutevar8x32_ps(m, swapHalves))
            m = _mm256_max_ps(m, _mm256_permutevar8x32_ps(m, swapPairs))
            m = _mm256_max_ps(m, _mm256_permutevar8x32_ps(m, swapNeighbours))
            let amax = _mm256_cvtss_f32(m)
            let d = amax / 32767
            let id = _mm256_set1_ps(d > 0 ? 1 / d : 0)
            let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id))
            let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id))
            // packs works per 128-bit lane: [i0.lo, i1.lo, i0.hi, i1.hi]; permute back to k order.
            let p01 = _mm256_permutevar8x32_epi32(_mm256_packs_epi32(i0, i1), quads0213)
            let p23 = _mm256_permutevar8x32_epi32(_mm256_packs_epi32(i2, i3), quads0213)
            let out = UnsafeMutableRawPointer(q + r * ldq + 32 * b)
            out.storeBytes(of: p01, as: __m256i.self)
            (out + 32).storeBytes(of: p23, as: __m256i.self)
            scale[r * lds + b] = d
        }
    }
}

/// Widens `blocks` blocks of one 16-column Q8_0 panel (PackedQ8Matrix layout, starting at `w`) to int16 pairs:
/// dst[(p·2 + h)·16 ..< +16] = columns 8h..<8h+8 × inputs (2p, 2p+1), interleaved per column (the `vpmaddwd`
/// operand), and the scales to f32: scales[b·16 + c].
public func avx2WidenPanel16(_ w: UnsafeRawPointer, blocks: Int, into dst: UnsafeMutablePointer<Int16>,
                             scales: UnsafeMutablePointer<Float>) {
    // Within each 128-bit lane (4 columns × 4 inputs, bytes c·4 + j): pairs (0,1) of the 4 columns, then pairs (2,3).
    let pairs = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15)
    let flip = _mm256_set1_epi8(-128)   // stored u = q + 128  →  q
    let pickA = _mm256_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5), pickB = _mm256_setr_epi32(2, 3, 6, 7, 2, 3, 6, 7)
    for b in 0..<blocks {
        let blk = w + b * 544
        _mm256_storeu_ps(scales + 16 * b, _mm256_cvtph_ps((blk + 512).loadUnaligned(as: __m128i.self)))
        _mm256_storeu_ps(scales + 16 * b + 8, _mm256_cvtph_ps((blk + 528).loadUnaligned(as: __m128i.self)))
        for g in 0..<8 {
            // 64 bytes: columns 0..7 (first 32) and 8..15 × inputs 4g ..< 4g+4.
            for h in 0..<2 {
                let v = _mm256_xor_si256((blk + 64 * g + 32 * h).loadUnaligned(as: __m256i.self), flip)
                // [cols 0-3 pair A, cols 0-3 pair B | cols 4-7 pair A, cols 4-7 pair B] → A(0-7), B(0-7) in low halves
                let sh = _mm256_shuffle_epi8(v, pairs)
                let a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sh, pickA))
                let bq = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sh, pickB))
                let p = 16 * b + 2 * g   // pair index of inputs (4g, 4g+1) in the chunk
                let outA = UnsafeMutableRawPointer(dst + (p * 2 + h) * 16)
                let outB = UnsafeMutableRawPointer(dst + ((p + 1) * 2 + h) * 16)
                outA.storeBytes(of: _mm256_cvtepi8_epi16(a), as: __m256i.self)
                outB.storeBytes(of: _mm256_cvtepi8_epi16(bq), as: __m256i.self)
            }
        }
    }
}

/// y[r, 0..<cols] (+)= Σ_b xs[r, b] · Σ_{k ∈ b} (q[r, k] · w[k, c]) · scales[b, c] for 6 rows and the 16 columns
/// of a widened panel chunk: twelve int32 accumulators per block (each activation broadcast feeds two
/// `vpmaddwd`), the f32 sums of the blocks kept in a 6 × 16 tile in L1. x: int16 rows (stride ldx elements) at
/// the chunk's first input; xs: per-block activation scales (stride lds) at the chunk's first block.
public func avx2I16Tile6x16(_ x: UnsafePointer<Int16>, ldx: Int, xs: UnsafePointer<Float>, lds: Int,
                            w: UnsafePointer<Int16>, scales: UnsafePointer<Float>, blocks: Int,
                            y: UnsafeMutablePointer<Float>, ldy: Int, cols: Int, accumulate: Bool) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 96) { t in
        let f = t.baseAddress!
        f.initialize(repeating: 0, count: 96)
        let r0 = UnsafeRawPointer(x), r1 = UnsafeRawPointer(x + ldx), r2 = UnsafeRawPointer(x + 2 * ldx)
        let r3 = UnsafeRawPointer(x + 3 * ldx), r4 = UnsafeRawPointer(x + 4 * ldx), r5 = UnsafeRawPointer(x + 5 * ldx)
        for b in 0..<blocks {
            var a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256(), a2 = _mm256_setzero_si256()
            var a3 = _mm256_setzero_si256(), a4 = _mm256_setzero_si256(), a5 = _mm256_setzero_si256()
            var c0 = _mm256_setzero_si256(), c1 = _mm256_setzero_si256(), c2 = _mm256_setzero_si256()
            var c3 = _mm256_setzero_si256(), c4 = _mm256_setzero_si256(), c5 = _mm256_setzero_si256()
            for pp in 0..<16 {
                let p = 16 * b + pp
                let wa = UnsafeRawPointer(w + p * 32).loadUnaligned(as: __m256i.self)
                let wb = UnsafeRawPointer(w + p * 32 + 16).loadUnaligned(as: __m256i.self)
                let o = 4 * p
                var v = _mm256_set1_epi32(r0.loadUnaligned(fromByteOffset: o, as: Int32.self))
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v, wa)); c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(v, wb))
                v = _mm256_set1_epi32(r1.loadUnaligned(fromByteOffset: o, as: Int32.self))
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(v, wa)); c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(v, wb))
                v = _mm256_set1_epi32(r2.loadUnaligned(fromByteOffset: o, as: Int32.self))
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(v, wa)); c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(v, wb))
                v = _mm256_set1_epi32(r3.loadUnaligned(fromByteOffset: o, as: Int32.self))
                a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(v, wa)); c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(v, wb))
                v = _mm256_set1_epi32(r4.loadUnaligned(fromByteOffset: o, as: Int32.self))
                a4 = _mm256_add_epi32(a4, _mm256_madd_epi16(v, wa)); c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(v, wb))
                v = _mm256_set1_epi32(r5.loadUnaligned(fromByteOffset: o, as: Int32.self))
                a5 = _mm256_add_epi32(a5, _mm256_madd_epi16(v, wa)); c5 = _mm256_add_epi32(c5, _mm256_madd_epi16(v, wb))
            }
            let d0 = _mm256_loadu_ps(scales + 16 * b), d1 = _mm256_loadu_ps(scales + 16 * b + 8)
            @inline(__always) func flush(_ r: Int, _ lo: __m256i, _ hi: __m256i) {
                let s = _mm256_set1_ps(xs[r * lds + b]), row = f + 16 * r
                _mm256_storeu_ps(row, _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(d0, s), _mm256_loadu_ps(row)))
                _mm256_storeu_ps(row + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(d1, s), _mm256_loadu_ps(row + 8)))
            }
            flush(0, a0, c0); flush(1, a1, c1); flush(2, a2, c2); flush(3, a3, c3); flush(4, a4, c4); flush(5, a5, c5)
        }
        for r in 0..<6 {
            store2(y + r * ldy, _mm256_loadu_ps(f + 16 * r), _mm256_loadu_ps(f + 16 * r + 8), cols, accumulate)
        }
    }
}

/// One row of avx2I16Tile6x16.
public func avx2I16Tile1x16(_ x: UnsafePointer<Int16>, xs: UnsafePointer<Float>, w: UnsafePointer<Int16>,
                            scales: UnsafePointer<Float>, blocks: Int, y: UnsafeMutablePointer<Float>, cols: Int,
                            accumulate: Bool) {
    var f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps()
    let r = UnsafeRawPointer(x)
    for b in 0..<blocks {
        var i0 = _mm256_setzero_si256(), i1 = _mm256_setzero_si256()
        for pp in 0..<16 {
            let p = 16 * b + pp
            let a = _mm256_set1_epi32(r.loadUnaligned(fromByteOffset: 4 * p, as: Int32.self))
            i0 = _mm256_add_epi32(i0, _mm256_madd_epi16(a, UnsafeRawPointer(w + p * 32).loadUnaligned(as: __m256i.self)))
            i1 = _mm256_add_epi32(i1, _mm256_madd_epi16(a, UnsafeRawPointer(w + p * 32 + 16).loadUnaligned(as: __m256i.self)))
        }
        let s = _mm256_set1_ps(xs[b])
        f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(_mm256_loadu_ps(scales + 16 * b), s), f0)
        f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(_mm256_loadu_ps(scales + 16 * b + 8), s), f1)
    }
    store2(y, f0, f1, cols, accumulate)
}

#endif
