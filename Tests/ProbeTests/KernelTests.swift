import Foundation
@testable import Probe
import Testing

/// The SIMD kernels against a plain double-precision reference, for every class-group shape and a d_model
/// that is not a multiple of 8 or of the tile.
@Suite struct KernelTests {
    @Test("forward + backward gradients match a scalar reference (classes 2…9, d_model 37 and 1029, f32 and f16 rows)")
    func gradients() throws {
        for (classes, d) in [(2, 37), (3, 37), (5, 37), (7, 1029), (9, 37), (4, 8)] {
            for type in [ActivationType.f32, .f16] {
                let n = 7
                var rng = ProbeRNG(seed: UInt64(classes * 1000 + d), stream: 9)
                let values = (0..<(n * d)).map { _ in Float(rng.normal()) }
                let stored: [UInt8] = type == .f32 ? values.withUnsafeBytes { Array($0) }
                    : values.flatMap { v -> [UInt8] in let b = Float16(v).bitPattern; return [UInt8(b & 0xFF), UInt8(b >> 8)] }
                let xs: [Float] = type == .f32 ? values : values.map { Float(Float16($0)) }
                let labels = (0..<n).map { Int32($0 % classes) }
                let w = (0..<(classes * d)).map { _ in Float(rng.normal() / Double(d).squareRoot()) }   // logits of order 1: no saturation
                let b = (0..<classes).map { _ in Float(0.1 * rng.normal()) }
                let probe = ProbeState(weight: w, bias: b, classes: classes, dModel: d)
                let scratch = KernelScratch(dModel: d)
                let out = stored.withUnsafeBytes { raw -> BatchOutcome in
                    let rows = (0..<n).map { raw.baseAddress! + $0 * d * type.size }
                    return rows.withUnsafeBufferPointer { r in
                        labels.withUnsafeBufferPointer { l in
                            ProbeKernels.forwardBackward(probe, rows: r.baseAddress!, labels: l.baseAddress!, count: n, layerOffset: 0,
                                                         type: type, scratch: scratch)
                        }
                    }
                }
                // Reference in f64.
                var gW = [Double](repeating: 0, count: classes * d), gB = [Double](repeating: 0, count: classes)
                var loss = 0.0
                for i in 0..<n {
                    for j in 0..<classes {
                        var z = Double(b[j])
                        for k in 0..<d { z += Double(xs[i * d + k]) * Double(w[j * d + k]) }
                        let s = 1 / (1 + exp(-z)), y = j == Int(labels[i]) ? 1.0 : 0.0
                        loss += -(y * log(s) + (1 - y) * log(1 - s))
                        let gz = (s - y) / Double(n * classes)
                        gB[j] += gz
                        for k in 0..<d { gW[j * d + k] += gz * Double(xs[i * d + k]) }
                    }
                }
                let scale = gW.map(abs).max()!
                let err = zip(probe.gradW.array, gW).map { abs(Double($0) - $1) }.max()! / scale
                #expect(err < 1e-5, "classes \(classes), d \(d), \(type): gradient error \(err)")
                #expect(zip(probe.gradB.array, gB).allSatisfy { abs(Double($0) - $1) < 1e-6 }, "classes \(classes), d \(d): bias gradient")
                #expect(abs(out.lossSum - loss) / loss < 1e-5, "classes \(classes), d \(d): loss \(out.lossSum) vs \(loss)")
            }
        }
    }
}
