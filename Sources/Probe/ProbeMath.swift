import Foundation
import Quant
import Formats

// The arithmetic of one reading probe (Linear(d_model, classes) → sigmoid, BCELoss, Adam, ReduceLROnPlateau),
// written to follow PyTorch's CPU kernels operation by operation in float32 (docs/training.md).

/// Our own deterministic generator for the initial weights and the per-epoch shuffle: xoshiro256**
/// (Blackman & Vigna) whose state is four SplitMix64 outputs of `seed ^ (stream · 0xD1B54A32D192ED03)`.
/// Stream 0 shuffles the training rows; stream 1 + L initializes the probe of layer L (so a layer's
/// initial weights do not depend on which other layers are trained).
public struct ProbeRNG: Sendable {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64, stream: UInt64) {
        var x = seed ^ (stream &* 0xD1B5_4A32_D192_ED03)
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix(); s1 = splitmix(); s2 = splitmix(); s3 = splitmix()
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = (s3 << 45) | (s3 >> 19)
        return result
    }

    /// Uniform in 0..<n (Lemire's multiply-and-reject, unbiased).
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0)
        let bound = UInt64(n)
        let threshold = (0 &- bound) % bound
        while true {
            let r = next().multipliedFullWidth(by: bound)
            if r.low >= threshold { return Int(r.high) }
        }
    }

    /// Uniform double in [0, 1) with 53 random bits.
    public mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Standard normal by Box–Muller (both values of a pair are used, in order).
    private var spare: Double?
    public mutating func normal() -> Double {
        if let s = spare { spare = nil; return s }
        var u1 = unit()
        while u1 == 0 { u1 = unit() }
        let u2 = unit()
        let r = (-2 * Foundation.log(u1)).squareRoot()
        spare = r * Foundation.sin(2 * Double.pi * u2)
        return r * Foundation.cos(2 * Double.pi * u2)
    }

    /// Fisher–Yates, i from n−1 down to 1 swapping with below(i + 1).
    public mutating func shuffle<T>(_ a: inout [T]) {
        var i = a.count - 1
        while i >= 1 {
            a.swapAt(i, below(i + 1))
            i -= 1
        }
    }
}

/// The storage type of activations held in memory (the shards' own type: f16/bf16 → f32 is exact, so
/// keeping 16-bit data halves memory and bandwidth without changing any result).
/// The one type for how activations are stored (shards, imports, `extract --dtype`): F32, F16 or BF16.
public enum ActivationType: String, Sendable, Codable, CaseIterable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16"
    public var size: Int { self == .f32 ? 4 : 2 }
    /// The safetensors dtype of the same name.
    public var safeTensors: SafeTensorsDType {
        switch self { case .f32: return .f32; case .f16: return .f16; case .bf16: return .bf16 }
    }
    public var quantType: QuantType { safeTensors.quantType! }
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let t = ActivationType(rawValue: s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "dtype '\(s)' is not F32, F16 or BF16")
        }
        self = t
    }

    /// Converts `n` stored values to f32.
    @inline(__always)
    func convert(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        switch self {
        case .f32: dst.update(from: src.assumingMemoryBound(to: Float.self), count: n)
        case .f16: QuantType.f16.toFloat(src, dst, n)
        case .bf16: QuantType.bf16.toFloat(src, dst, n)
        }
    }
}

/// PyTorch's ReduceLROnPlateau: mode min, relative threshold, patience, cooldown, min_lr, eps — in f64.
public struct PlateauScheduler: Sendable, Equatable {
    public var factor: Double
    public var patience: Int
    public var threshold: Double = 1e-4
    public var cooldown: Int = 0
    public var minLR: Double = 0
    public var eps: Double = 1e-8
    public private(set) var best = Double.infinity
    public private(set) var numBadEpochs = 0
    public private(set) var cooldownCounter = 0

    public init(factor: Double, patience: Int) { self.factor = factor; self.patience = patience }

    /// One `scheduler.step(metric)`; returns the new learning rate.
    public mutating func step(_ current: Double, lr: Double) -> Double {
        var lr = lr
        if current < best * (1 - threshold) {
            best = current
            numBadEpochs = 0
        } else {
            numBadEpochs += 1
        }
        if cooldownCounter > 0 {
            cooldownCounter -= 1
            numBadEpochs = 0
        }
        if numBadEpochs > patience {
            let newLR = max(lr * factor, minLR)
            if lr - newLR > eps { lr = newLR }
            cooldownCounter = cooldown
            numBadEpochs = 0
        }
        return lr
    }
}

/// Adam hyperparameters (torch.optim.Adam, coupled weight decay).
public struct AdamConfig: Sendable, Equatable {
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var eps = 1e-8
    public var weightDecay = 0.1
    public var biasDecay = true
    public init() {}
}

/// One probe's parameters, Adam state and scratch gradients; aligned f32 buffers.
public final class ProbeState: @unchecked Sendable {
    public let classes: Int
    public let dModel: Int
    public let weight: FloatBuffer      // [classes, dModel]
    public let bias: FloatBuffer        // [classes]
    let mW: FloatBuffer, vW: FloatBuffer, mB: FloatBuffer, vB: FloatBuffer
    let gradW: FloatBuffer, gradB: FloatBuffer
    public private(set) var step = 0

    public init(weight: [Float], bias: [Float], classes: Int, dModel: Int) {
        precondition(weight.count == classes * dModel && bias.count == classes)
        self.classes = classes; self.dModel = dModel
        self.weight = FloatBuffer(weight)
        self.bias = FloatBuffer(bias)
        mW = FloatBuffer(count: classes * dModel); vW = FloatBuffer(count: classes * dModel)
        mB = FloatBuffer(count: classes); vB = FloatBuffer(count: classes)
        gradW = FloatBuffer(count: classes * dModel); gradB = FloatBuffer(count: classes)
    }

    /// One `optimizer.step()` with the gradients in gradW/gradB.
    func adamStep(lr: Double, _ c: AdamConfig) {
        step += 1
        let t = Double(step)
        let bc1 = 1 - Foundation.pow(c.beta1, t)
        let bc2 = 1 - Foundation.pow(c.beta2, t)
        let stepSize = lr / bc1
        let bc2Sqrt = bc2.squareRoot()
        let s = AdamScalars(oneMinusBeta1: Float(1 - c.beta1), beta2: Float(c.beta2), oneMinusBeta2: Float(1 - c.beta2),
                            bc2Sqrt: Float(bc2Sqrt), eps: Float(c.eps), negStepSize: Float(-stepSize))
        Self.adam(weight.pointer, gradW.pointer, mW.pointer, vW.pointer, classes * dModel, Float(c.weightDecay), s)
        Self.adam(bias.pointer, gradB.pointer, mB.pointer, vB.pointer, classes, c.biasDecay ? Float(c.weightDecay) : 0, s)
    }

    struct AdamScalars {
        let oneMinusBeta1: Float, beta2: Float, oneMinusBeta2: Float, bc2Sqrt: Float, eps: Float, negStepSize: Float
    }

    /// torch's _single_tensor_adam, element by element in f32:
    /// g += wd·p (fused, as torch's add with alpha); m = lerp(m, g, 1−β1) = m + w·(g − m) (fused);
    /// v = v·β2 + ((1−β2)·g)·g; p += ((−lr/bc1)·m) / (sqrt(v)/sqrt(bc2) + eps).
    static func adam(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                     _ v: UnsafeMutablePointer<Float>, _ n: Int, _ wd: Float, _ s: AdamScalars) {
        typealias V = SIMD8<Float>
        let decay = wd != 0
        var i = 0
        let w1 = V(repeating: s.oneMinusBeta1), b2 = V(repeating: s.beta2), w2 = V(repeating: s.oneMinusBeta2)
        let bc = V(repeating: s.bc2Sqrt), eps = V(repeating: s.eps), step = V(repeating: s.negStepSize)
        let wdv = V(repeating: wd)
        let P = UnsafeMutableRawPointer(p), G = UnsafeMutableRawPointer(g), M = UnsafeMutableRawPointer(m), Vv = UnsafeMutableRawPointer(v)
        while i + 8 <= n {
            let o = 4 * i
            var grad = G.loadUnaligned(fromByteOffset: o, as: V.self)
            let param = P.loadUnaligned(fromByteOffset: o, as: V.self)
            if decay { grad = grad.addingProduct(param, wdv) }
            let mOld = M.loadUnaligned(fromByteOffset: o, as: V.self)
            let mNew = mOld.addingProduct(w1, grad - mOld)
            let vNew = Vv.loadUnaligned(fromByteOffset: o, as: V.self) * b2 + w2 * grad * grad
            let denom = vNew.squareRoot() / bc + eps
            M.storeBytes(of: mNew, toByteOffset: o, as: V.self)
            Vv.storeBytes(of: vNew, toByteOffset: o, as: V.self)
            P.storeBytes(of: param + step * mNew / denom, toByteOffset: o, as: V.self)
            i += 8
        }
        while i < n {
            var grad = g[i]
            if decay { grad = grad.addingProduct(p[i], wd) }
            let mNew = m[i].addingProduct(s.oneMinusBeta1, grad - m[i])
            let vNew = v[i] * s.beta2 + s.oneMinusBeta2 * grad * grad
            let denom = vNew.squareRoot() / s.bc2Sqrt + s.eps
            m[i] = mNew
            v[i] = vNew
            p[i] = p[i] + s.negStepSize * mNew / denom
            i += 1
        }
    }
}
