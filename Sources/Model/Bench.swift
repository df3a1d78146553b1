import Foundation
import Quant
import Formats

/// Per-layer throughput of the forward pass, with OpenBLAS sgemm measured in the same run on the same
/// shapes as the yardstick. Used by `llamaprobe bench`.
public struct BenchReport: Codable, Sendable {
    public struct Layer: Codable, Sendable {
        public let layer: Int
        public let ms_per_token: Double
        public let tokens_per_second: Double
    }
    public let model_tokens_per_second: Double
    public let layers: [Layer]
    /// Achieved GFLOP/s of a layer (projections + attention), median layer time.
    public let gflops: Double
    /// OpenBLAS sgemm on the layer's seven projection shapes, f32, same thread count.
    public let sgemm_gflops: Double
    public let ratio_to_sgemm: Double
    public let threads: Int
    public let backend: String
    public let kernel: String
    public let tokens: Int
    public let repeats: Int
    /// Full-depth estimate: tokens/s of the whole model if it had all its layers (for truncated presets).
    public let full_depth_layers: Int
    public let full_depth_tokens_per_second: Double
}

public enum Bench {
    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Times `repeats` forward passes over `tokens` tokens and reports medians per layer. With `.all` every
    /// layer computes every position (per-layer figures comparable across layers); with `.last` the last
    /// layer stops at the last position after attention, as extraction (and llama.cpp's prompt processing) does.
    public static func run(model: LlamaModel, tokens: Int, repeats: Int, positions: Positions = .all,
                           fullDepth: Int? = nil) throws -> BenchReport {
        let c = model.config
        let ids = (0..<tokens).map { Int32(($0 * 7919 + 3) % min(c.vocabSize, 32000)) }
        let L = c.numHiddenLayers
        var perLayer = [[Double]](repeating: [], count: L)
        var totals: [Double] = []
        _ = try model.forward(ids, positions: positions) { _, _ in }   // warm-up (allocates the run state)
        for _ in 0..<repeats {
            var stamps = [Double](repeating: 0, count: L + 1)
            let t0 = now()
            try model.forward(ids, positions: positions) { point, _ in
                switch point {
                case .embedding: stamps[0] = now()
                case .residPost(let l): stamps[l + 1] = now()
                }
            }
            totals.append(now() - t0)
            for l in 0..<L { perLayer[l].append(stamps[l + 1] - stamps[l]) }
        }
        let T = Double(tokens)
        let layerMedians = perLayer.map(median)
        let layers = layerMedians.enumerated().map { l, s in
            BenchReport.Layer(layer: l, ms_per_token: s * 1e3 / T, tokens_per_second: T / s)
        }
        let flops = layerFlops(c, tokens: tokens)
        let typical = median(positions == .all || L < 3 ? layerMedians : Array(layerMedians.dropLast()))
        let sgemm = sgemmGFLOPs(c, tokens: tokens, repeats: repeats, pool: model.pool)
        let gflops = flops / typical / 1e9
        let depth = fullDepth ?? L
        let fixed = max(0, median(totals) - layerMedians.reduce(0, +))
        return BenchReport(
            model_tokens_per_second: T / median(totals), layers: layers, gflops: gflops, sgemm_gflops: sgemm,
            ratio_to_sgemm: gflops / sgemm, threads: model.pool.threadCount, backend: model.engine.backend.rawValue,
            kernel: model.engine.description, tokens: tokens, repeats: repeats, full_depth_layers: depth,
            full_depth_tokens_per_second: T / (fixed + typical * Double(depth)))
    }

    /// FLOPs of one layer over T tokens: 2·T·(projection parameters) + causal attention (QKᵀ and PV).
    public static func layerFlops(_ c: LlamaConfig, tokens: Int) -> Double {
        let T = Double(tokens)
        let proj = Double(c.hiddenSize * (2 * c.qDim + 2 * c.kvDim) + 3 * c.hiddenSize * c.intermediateSize)
        let attn = 2 * 2 * Double(c.numAttentionHeads * c.headDimension) * T * (T + 1) / 2
        return 2 * T * proj + attn
    }

    /// OpenBLAS sgemm GFLOP/s on the seven projection shapes of a layer (x [T, in] · W[out, in]ᵀ), f32.
    public static func sgemmGFLOPs(_ c: LlamaConfig, tokens: Int, repeats: Int, pool: ThreadPool) -> Double {
        let shapes = [(c.qDim, c.hiddenSize), (c.kvDim, c.hiddenSize), (c.kvDim, c.hiddenSize), (c.hiddenSize, c.qDim),
                      (c.intermediateSize, c.hiddenSize), (c.intermediateSize, c.hiddenSize),
                      (c.hiddenSize, c.intermediateSize)]
        let maxIn = shapes.map(\.1).max()!, maxOut = shapes.map(\.0).max()!
        let x = FloatBuffer(count: tokens * maxIn), y = FloatBuffer(count: tokens * maxOut)
        let weights = shapes.map { FloatBuffer(count: $0.0 * $0.1) }
        for (i, w) in weights.enumerated() {
            pool.parallelRanges(w.count, chunksPerThread: 2) { r in for j in r { w[j] = Float((j &* 2654435761 &+ i) % 1000) * 1e-4 - 0.05 } }
        }
        for i in 0..<x.count { x[i] = Float(i % 17) * 0.01 }
        var times: [Double] = []
        for rep in 0...repeats {
            let t0 = now()
            for (s, w) in zip(shapes, weights) {
                BLAS.matmulTransposedB(x.pointer, w.pointer, y.pointer, m: tokens, n: s.0, k: s.1, pool: pool)
            }
            if rep > 0 { times.append(now() - t0) }   // the first run warms up
        }
        let flops = 2 * Double(tokens) * Double(shapes.reduce(0) { $0 + $1.0 * $1.1 })
        return flops / median(times) / 1e9
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.isEmpty ? 0 : s[s.count / 2]
    }
}
