import Foundation
import Quant
import Formats

/// Per-thread scratch space of the probe kernels.
final class KernelScratch: @unchecked Sendable {
    let dModel: Int
    let rows: FloatBuffer          // 4 rows converted to f32 (16-bit storage)
    var z = [Float]()              // [4, classes] logits of the current block
    var g = [Float]()              // [4, classes] ∂L/∂z of the current block
    /// The current block's four f32 rows (into the data, or into `rows`).
    let x = UnsafeMutablePointer<UnsafePointer<Float>>.allocate(capacity: 4)
    init(dModel: Int) {
        self.dModel = dModel
        rows = FloatBuffer(count: 4 * dModel)
    }
    deinit { x.deallocate() }
}

/// What one pass of a probe over a batch produced.
struct BatchOutcome {
    var lossSum: Double = 0      // sum of the per-element BCE terms (each f32)
    var correct = 0
    var saturated = 0            // outputs exactly 0 or 1
}

/// The kernels of one probe on a batch of rows. A row is `[layers, dModel]` in the storage type; the
/// probe's layer is at `layerOffset` bytes. Samples are taken four at a time: their activations are read
/// from memory once for the forward pass and reused from cache by the backward pass.
enum ProbeKernels {
    typealias V = SIMD8<Float>

    /// Forward + BCE + backward into probe.gradW/gradB (overwritten), PyTorch's unfused formulas:
    /// s = 1/(1 + exp(−z)); loss = (y − 1)·max(log1p(−s), −100) − y·max(log(s), −100), mean;
    /// ∂/∂s = (s − y)/max((1 − s)s, 1e-12)/numel; ∂/∂z = ∂/∂s·(1 − s)·s.
    /// Accuracy and saturation are counted on the outputs before the step.
    static func forwardBackward(_ probe: ProbeState, rows: UnsafePointer<UnsafeRawPointer>, labels: UnsafePointer<Int32>,
                                count: Int, layerOffset: Int, type: ActivationType, scratch: KernelScratch) -> BatchOutcome {
        let c = probe.classes, d = probe.dModel
        probe.gradW.pointer.update(repeating: 0, count: c * d)
        probe.gradB.pointer.update(repeating: 0, count: c)
        let numel = Float(count * c)
        var out = BatchOutcome()
        if scratch.g.count != 4 * c { scratch.g = [Float](repeating: 0, count: 4 * c) }
        var b0 = 0
        while b0 < count {
            let n = min(4, count - b0)
            let x = blockRows(rows, b0, n, layerOffset, type, scratch)
            logits(probe, x, scratch: scratch)
            for k in 0..<4 {
                for j in 0..<c { scratch.g[k * c + j] = 0 }
                guard k < n else { continue }
                let label = Int(labels[b0 + k])
                var best = 0
                var bestValue = -Float.infinity
                for j in 0..<c {
                    let zz = scratch.z[k * c + j] + probe.bias[j]
                    let s = 1 / (1 + Foundation.expf(-zz))
                    if s > bestValue { bestValue = s; best = j }
                    if s == 0 || s == 1 { out.saturated += 1 }
                    let y: Float = j == label ? 1 : 0
                    out.lossSum += Double(bceTerm(s, y))
                    let t = (s - y) / max((1 - s) * s, 1e-12) / numel
                    let gz = t * (1 - s) * s
                    scratch.g[k * c + j] = gz
                    probe.gradB[j] += gz
                }
                if best == label { out.correct += 1 }
            }
            accumulate(probe, x, scratch.g)
            b0 += n
        }
        return out
    }

    /// Forward only (validation): loss terms and correct count; optionally the outputs [count, classes].
    static func evaluate(_ probe: ProbeState, rows: UnsafePointer<UnsafeRawPointer>, labels: UnsafePointer<Int32>,
                         count: Int, layerOffset: Int, type: ActivationType, scratch: KernelScratch,
                         outputs: UnsafeMutablePointer<Float>? = nil) -> BatchOutcome {
        let c = probe.classes
        var out = BatchOutcome()
        var b0 = 0
        while b0 < count {
            let n = min(4, count - b0)
            let x = blockRows(rows, b0, n, layerOffset, type, scratch)
            logits(probe, x, scratch: scratch)
            for k in 0..<n {
                let label = Int(labels[b0 + k])
                var best = 0
                var bestValue = -Float.infinity
                for j in 0..<c {
                    let s = 1 / (1 + Foundation.expf(-(scratch.z[k * c + j] + probe.bias[j])))
                    if s > bestValue { bestValue = s; best = j }
                    if s == 0 || s == 1 { out.saturated += 1 }
                    out.lossSum += Double(bceTerm(s, j == label ? 1 : 0))
                    outputs?[(b0 + k) * c + j] = s
                }
                if best == label { out.correct += 1 }
            }
            b0 += n
        }
        return out
    }

    @inline(__always)
    static func bceTerm(_ s: Float, _ y: Float) -> Float {
        (y - 1) * max(Foundation.log1pf(-s), -100) - y * max(Foundation.logf(s), -100)
    }

    /// f32 pointers to the probe's layer of up to four rows (a short block repeats its first row).
    @inline(__always)
    static func blockRows(_ rows: UnsafePointer<UnsafeRawPointer>, _ start: Int, _ n: Int, _ layerOffset: Int,
                          _ type: ActivationType, _ scratch: KernelScratch) -> UnsafePointer<UnsafePointer<Float>> {
        let x = scratch.x
        for k in 0..<4 {
            let src = rows[start + (k < n ? k : 0)] + layerOffset
            if type == .f32 {
                x[k] = src.assumingMemoryBound(to: Float.self)
            } else if k < n {
                let dst = scratch.rows.pointer + k * scratch.dModel
                type.convert(src, dst, scratch.dModel)
                x[k] = UnsafePointer(dst)
            } else {
                x[k] = x[0]
            }
        }
        return UnsafePointer(x)
    }

    /// scratch.z[k·classes + j] = x_k · W_j for the four rows, two classes at a time (an odd last class is
    /// computed twice). The first pass streams the rows from memory; the others find them in cache.
    static func logits(_ probe: ProbeState, _ x: UnsafePointer<UnsafePointer<Float>>, scratch: KernelScratch) {
        let c = probe.classes, d = probe.dModel
        if scratch.z.count != 4 * c { scratch.z = [Float](repeating: 0, count: 4 * c) }
        let w = probe.weight.pointer
        let x0 = UnsafeRawPointer(x[0]), x1 = UnsafeRawPointer(x[1]), x2 = UnsafeRawPointer(x[2]), x3 = UnsafeRawPointer(x[3])
        var j = 0
        while j < c {
            let ja = j, jb = min(j + 1, c - 1)
            let wa = UnsafeRawPointer(w + ja * d), wb = UnsafeRawPointer(w + jb * d)
            var a0 = V(), a1 = V(), a2 = V(), a3 = V(), b0 = V(), b1 = V(), b2 = V(), b3 = V()
            var i = 0
            while i + 8 <= d {
                let o = 4 * i
                let va = wa.loadUnaligned(fromByteOffset: o, as: V.self), vb = wb.loadUnaligned(fromByteOffset: o, as: V.self)
                let v0 = x0.loadUnaligned(fromByteOffset: o, as: V.self), v1 = x1.loadUnaligned(fromByteOffset: o, as: V.self)
                let v2 = x2.loadUnaligned(fromByteOffset: o, as: V.self), v3 = x3.loadUnaligned(fromByteOffset: o, as: V.self)
                a0 = a0.addingProduct(v0, va); a1 = a1.addingProduct(v1, va)
                a2 = a2.addingProduct(v2, va); a3 = a3.addingProduct(v3, va)
                b0 = b0.addingProduct(v0, vb); b1 = b1.addingProduct(v1, vb)
                b2 = b2.addingProduct(v2, vb); b3 = b3.addingProduct(v3, vb)
                i += 8
            }
            var s = SIMD8<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum(), b0.sum(), b1.sum(), b2.sum(), b3.sum())   // rows × (class a, class b)
            while i < d {
                let pa = w[ja * d + i], pb = w[jb * d + i]
                for k in 0..<4 { s[k] = s[k].addingProduct(x[k][i], pa); s[4 + k] = s[4 + k].addingProduct(x[k][i], pb) }
                i += 1
            }
            for k in 0..<4 {
                scratch.z[k * c + ja] = s[k]
                scratch.z[k * c + jb] = s[4 + k]
            }
            j += 2
        }
    }

    /// gradW[j] += Σ_k g[k, j]·x_k, in sample order. d_model is walked in tiles of 512 so that the four rows'
    /// tile stays in L1 while every class (two at a time) uses it.
    static func accumulate(_ probe: ProbeState, _ x: UnsafePointer<UnsafePointer<Float>>, _ g: [Float]) {
        let c = probe.classes, d = probe.dModel
        let gw = probe.gradW.pointer
        let x0 = UnsafeRawPointer(x[0]), x1 = UnsafeRawPointer(x[1]), x2 = UnsafeRawPointer(x[2]), x3 = UnsafeRawPointer(x[3])
        let tile = 512
        var t0 = 0
        while t0 < d {
            let t1 = min(d, t0 + tile)
            let vecEnd = t0 + (t1 - t0) / 8 * 8
            var j = 0
            while j < c {
                if j + 1 < c {
                    let ga0 = V(repeating: g[j]), ga1 = V(repeating: g[c + j]), ga2 = V(repeating: g[2 * c + j]), ga3 = V(repeating: g[3 * c + j])
                    let gb0 = V(repeating: g[j + 1]), gb1 = V(repeating: g[c + j + 1]), gb2 = V(repeating: g[2 * c + j + 1]), gb3 = V(repeating: g[3 * c + j + 1])
                    let da = UnsafeMutableRawPointer(gw + j * d), db = UnsafeMutableRawPointer(gw + (j + 1) * d)
                    var i = t0
                    while i < vecEnd {
                        let o = 4 * i
                        let v0 = x0.loadUnaligned(fromByteOffset: o, as: V.self), v1 = x1.loadUnaligned(fromByteOffset: o, as: V.self)
                        let v2 = x2.loadUnaligned(fromByteOffset: o, as: V.self), v3 = x3.loadUnaligned(fromByteOffset: o, as: V.self)
                        var a = da.loadUnaligned(fromByteOffset: o, as: V.self)
                        var b = db.loadUnaligned(fromByteOffset: o, as: V.self)
                        a = a.addingProduct(v0, ga0); b = b.addingProduct(v0, gb0)
                        a = a.addingProduct(v1, ga1); b = b.addingProduct(v1, gb1)
                        a = a.addingProduct(v2, ga2); b = b.addingProduct(v2, gb2)
                        a = a.addingProduct(v3, ga3); b = b.addingProduct(v3, gb3)
                        da.storeBytes(of: a, toByteOffset: o, as: V.self)
                        db.storeBytes(of: b, toByteOffset: o, as: V.self)
                        i += 8
                    }
                    while i < t1 {
                        for k in 0..<4 {
                            gw[j * d + i] = gw[j * d + i].addingProduct(x[k][i], g[k * c + j])
                            gw[(j + 1) * d + i] = gw[(j + 1) * d + i].addingProduct(x[k][i], g[k * c + j + 1])
                        }
                        i += 1
                    }
                    j += 2
                } else {
                    let g0 = V(repeating: g[j]), g1 = V(repeating: g[c + j]), g2 = V(repeating: g[2 * c + j]), g3 = V(repeating: g[3 * c + j])
                    let da = UnsafeMutableRawPointer(gw + j * d)
                    var i = t0
                    while i < vecEnd {
                        let o = 4 * i
                        var a = da.loadUnaligned(fromByteOffset: o, as: V.self)
                        a = a.addingProduct(x0.loadUnaligned(fromByteOffset: o, as: V.self), g0)
                        a = a.addingProduct(x1.loadUnaligned(fromByteOffset: o, as: V.self), g1)
                        a = a.addingProduct(x2.loadUnaligned(fromByteOffset: o, as: V.self), g2)
                        a = a.addingProduct(x3.loadUnaligned(fromByteOffset: o, as: V.self), g3)
                        da.storeBytes(of: a, toByteOffset: o, as: V.self)
                        i += 8
                    }
                    while i < t1 {
                        for k in 0..<4 { gw[j * d + i] = gw[j * d + i].addingProduct(x[k][i], g[k * c + j]) }
                        i += 1
                    }
                    j += 1
                }
            }
            t0 = t1
        }
    }
}
