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

/// Issue 10: prediction computes probabilities with training's kernel and summation order.
@Suite struct PredictionKernelTests {
    @Test("ProbeSet.probabilities equals validation's outputs bit for bit (and differs from a plain dot-product loop somewhere)")
    func sameAsValidation() throws {
        let classes = 7, d = 1029, n = 9
        var rng = ProbeRNG(seed: 5, stream: 3)
        let x = (0..<(n * d)).map { _ in Float(rng.normal()) }
        let w = (0..<(classes * d)).map { _ in Float(rng.normal() / 8) }
        let b = (0..<classes).map { _ in Float(rng.normal()) }
        let dir = NSTemporaryDirectory() + "pk-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let meta = ProbeSetMetadata(labels: (0..<classes).map { "c\($0)" }, layers: [3], bestLayer: 3, dModel: d, withEmbeddings: false,
                                    model: nil, quantization: nil, readout: nil, bestEpochs: [:])
        let written = try ProbeSet.write([.init(layer: 3, best: (w, b), final: (w.map { $0 * 2 }, b))], metadata: meta, into: dir)
        #expect(Set(written) == [ProbeFiles.probes, ProbeFiles.best(layer: 3), ProbeFiles.final(layer: 3), ProbeFiles.readout])
        let set = try ProbeSet.load(directory: dir)
        #expect(set.bestLayer == 3 && set.probes[3]?.weight == w, "the best checkpoint is the one read")

        var validation = [Float](repeating: 0, count: n * classes)
        let probe = ProbeState(weight: w, bias: b, classes: classes, dModel: d)
        x.withUnsafeBytes { raw in
            let rows = (0..<n).map { raw.baseAddress! + $0 * d * 4 }
            let labels = [Int32](repeating: 0, count: n)
            rows.withUnsafeBufferPointer { r in
                labels.withUnsafeBufferPointer { l in
                    validation.withUnsafeMutableBufferPointer { o in
                        _ = ProbeKernels.evaluate(probe, rows: r.baseAddress!, labels: l.baseAddress!, count: n, layerOffset: 0,
                                                  type: .f32, scratch: KernelScratch(dModel: d), outputs: o.baseAddress!)
                    }
                }
            }
        }
        var naiveDiffers = false
        for i in 0..<n {
            let p = x.withUnsafeBufferPointer { set.probabilities(layer: 3, residual: $0.baseAddress! + i * d) }
            #expect(p.map(\.bitPattern) == validation[i * classes..<(i + 1) * classes].map(\.bitPattern), "row \(i)")
            for j in 0..<classes {
                var z = b[j]
                for k in 0..<d { z += w[j * d + k] * x[i * d + k] }
                if (1 / (1 + expf(-z))).bitPattern != p[j].bitPattern { naiveDiffers = true }
            }
        }
        #expect(naiveDiffers, "the sequential loop predict used before rounds differently somewhere (else this test proves nothing)")
    }
}
