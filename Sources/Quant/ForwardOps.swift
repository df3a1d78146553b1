#if canImport(Glibc)
import Glibc
#endif

/// The forward pass's row kernels (RMSNorm, RoPE, attention, SwiGLU). They live in this module, compiled
/// for speed without overflow checks, so that `Model` (config and checkpoint readers, the layer loop) keeps
/// Swift's checks: the layer loop calls these once per row or head, never per element.
public enum ForwardOps {
    /// out = w ⊙ (x / sqrt(mean(x²) + eps)) for one row of `d` values (HF's LlamaRMSNorm in float32).
    public static func rmsnormRow(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>,
                                  _ w: UnsafePointer<Float>, _ d: Int, eps: Float) {
        let ss = sumOfSquares(x, d)
        let inv = 1 / (ss / Float(d) + eps).squareRoot()
        for i in 0..<d { out[i] = w[i] * (x[i] * inv) }
    }

    /// cos/sin of position · inv_freq for positions 0..<count ([count, invFreq.count] each, float32 as HF).
    public static func ropeTables(cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>,
                                  invFreq: UnsafePointer<Float>, half: Int, count: Int) {
        for p in 0..<count {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]
                cos[p * half + i] = cosf(angle)
                sin[p * half + i] = sinf(angle)
            }
        }
    }

    /// Rotates one head's vector `e` (2·half values) by the position's cos/sin: pairs (i, i + half) as HF's
    /// rotate_half, or (2i, 2i + 1) when `interleaved` (GGUF's layout).
    public static func rotate(_ e: UnsafeMutablePointer<Float>, cos cs: UnsafePointer<Float>, sin sn: UnsafePointer<Float>,
                              half: Int, interleaved: Bool) {
        if interleaved {
            for i in 0..<half {
                let a = e[2 * i], b = e[2 * i + 1]
                e[2 * i] = a * cs[i] - b * sn[i]
                e[2 * i + 1] = b * cs[i] + a * sn[i]
            }
        } else {
            for i in 0..<half {
                let a = e[i], b = e[i + half]
                e[i] = a * cs[i] - b * sn[i]
                e[i + half] = b * cs[i] + a * sn[i]
            }
        }
    }

    /// One query head's causal attention over keys 0..<keys: out[hd] = softmax(q·kⱼ·scale) · vⱼ, keys and
    /// values `stride` floats apart; `scratch` holds `keys` scores.
    public static func attendRow(query q: UnsafePointer<Float>, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>,
                                 stride: Int, headDim hd: Int, keys count: Int, scale: Float,
                                 scratch sc: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        var maxScore = -Float.infinity
        for j in 0..<count {
            let score = dot(q, k + j * stride, hd) * scale
            sc[j] = score
            maxScore = max(maxScore, score)
        }
        var sum: Float = 0
        for j in 0..<count {
            let e = expf(sc[j] - maxScore)
            sc[j] = e
            sum += e
        }
        out.initialize(repeating: 0, count: hd)
        for j in 0..<count { axpy(sc[j] / sum, v + j * stride, out, hd) }
    }

    /// Softmax over scores `from..<valid` of a row of `keys` in place; the rest (keys before an attention
    /// window, and future positions) become 0.
    public static func causalSoftmaxRow(_ row: UnsafeMutablePointer<Float>, from: Int = 0, valid: Int, keys: Int) {
        var mx = -Float.infinity
        for j in from..<valid { mx = max(mx, row[j]) }
        var sum: Float = 0
        for j in from..<valid { let e = expf(row[j] - mx); row[j] = e; sum += e }
        for j in from..<valid { row[j] /= sum }
        for j in 0..<from { row[j] = 0 }
        for j in valid..<keys { row[j] = 0 }
    }

    /// a = silu(a) · b elementwise over `count` values, silu(x) = x / (1 + e^-x).
    public static func swiglu(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = a[i]
            a[i] = g / (1 + expf(-g)) * b[i]
        }
    }

    /// x += delta over `count` values (the steering write point).
    public static func addRow(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, _ count: Int) {
        for i in 0..<count { x[i] += delta[i] }
    }

    /// Sum of `n` floats, 4 × 16 lanes at a time: a memory read at full speed (the bandwidth benchmark).
    public static func readSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
        var i = 0
        let raw = UnsafeRawPointer(x)
        while i + 64 <= n {
            a0 += raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            a1 += raw.loadUnaligned(fromByteOffset: 4 * (i + 16), as: SIMD16<Float>.self)
            a2 += raw.loadUnaligned(fromByteOffset: 4 * (i + 32), as: SIMD16<Float>.self)
            a3 += raw.loadUnaligned(fromByteOffset: 4 * (i + 48), as: SIMD16<Float>.self)
            i += 64
        }
        var s = (a0 + a1 + a2 + a3).sum()
        while i < n { s += x[i]; i += 1 }
        return s
    }

    /// Index of the first of `rows` rows of `width` values holding a NaN/Inf, or nil.
    public static func firstNonFinite(_ x: UnsafePointer<Float>, rows: Int, width: Int) -> Int? {
        for r in 0..<rows {
            var acc: Float = 0
            let p = x + r * width
            for i in 0..<width { acc += p[i] - p[i] }
            if acc != 0 || acc.isNaN { return r }
        }
        return nil
    }

    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            acc0 += UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self) * UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
            acc1 += UnsafeRawPointer(a + i + 8).loadUnaligned(as: SIMD8<Float>.self) * UnsafeRawPointer(b + i + 8).loadUnaligned(as: SIMD8<Float>.self)
            i += 16
        }
        while i + 8 <= n {
            acc0 += UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self) * UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
            i += 8
        }
        var s = horizontalSum(acc0 + acc1)
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// y += alpha · x
    @inline(__always)
    static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let a = SIMD8<Float>(repeating: alpha)
        while i + 8 <= n {
            let yv = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            let xv = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: yv + a * xv, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// Sum of squares with 8-lane partial sums reduced by halves.
    @inline(__always)
    static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            acc += v * v
            i += 8
        }
        var s = horizontalSum(acc)
        while i < n { s += x[i] * x[i]; i += 1 }
        return s
    }

    @inline(__always)
    static func horizontalSum(_ v: SIMD8<Float>) -> Float {
        let h = v.lowHalf + v.highHalf
        let q = h.lowHalf + h.highHalf
        return q[0] + q[1]
    }
}
