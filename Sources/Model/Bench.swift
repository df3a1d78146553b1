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
                default: break
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

/// Decoding speed (`llamaprobe bench --decode`): tokens/s of KV-cached generation after a prompt of each
/// context length, per layer and for the model, with the bytes each token reads and the machine's
/// measured memory bandwidth (decoding one token reads every weight once: it is bound by memory).
public struct DecodeReport: Codable, Sendable {
    public struct Context: Codable, Sendable {
        /// Positions already in the cache when the timed tokens start.
        public let context: Int
        /// Tokens decoded per timed run.
        public let tokens: Int
        public let model_tokens_per_second: Double
        public let ms_per_token: Double
        public let layers: [BenchReport.Layer]
        /// Keys and values read per token, averaged over the run (grows with the context).
        public let kv_bytes_per_token: Double
        /// (weights + keys/values) bytes per token × tokens/s, over the measured bandwidth.
        public let bandwidth_fraction: Double
        /// Full-depth estimate (truncated presets): the fixed part plus the median layer × depth.
        public let full_depth_tokens_per_second: Double
        public let full_depth_bandwidth_fraction: Double
    }
    public let contexts: [Context]
    /// Weights read per token: every projection, norm and the output head once, one embedding row.
    public let weight_bytes_per_token: Int
    public let layer_weight_bytes: Int
    public let full_depth_layers: Int
    public let full_depth_weight_bytes_per_token: Int
    /// Parallel read of a 1 GiB buffer with the same threads (best of 5), GB/s (1e9 bytes).
    public let memory_bandwidth_gbps: Double
    public let threads: Int
    public let backend: String
    public let kernel: String
    public let repeats: Int
}

extension Bench {
    /// Times `repeats` runs of `tokens` decoding steps after a prompt of each length in `contexts` (medians).
    public static func decode(model: LlamaModel, contexts: [Int], tokens: Int, repeats: Int, fullDepth: Int? = nil,
                              bandwidthBytes: Int = 1 << 30) throws -> DecodeReport {
        let c = model.config, w = model.weights, L = c.numHiddenLayers
        let layerBytes = w.layers.first.map { l in
            l.projections.reduce(0) { $0 + $1.byteCount } + 2 * c.hiddenSize * 4
        } ?? 0
        let fixedBytes = (w.head?.byteCount ?? 0) + c.hiddenSize * 4 + w.embedding.rowBytes
        let weightBytes = fixedBytes + layerBytes * L
        let depth = fullDepth ?? L
        let bandwidth = memoryBandwidth(pool: model.pool, bytes: bandwidthBytes)
        var out: [DecodeReport.Context] = []
        for context in contexts {
            let cache = try model.makeCache(capacity: context + tokens)
            let prompt = (0..<max(1, context)).map { Int32(($0 * 7919 + 3) % min(c.vocabSize, 32000)) }
            _ = try model.prefill(prompt, cache: cache)
            let start = cache.count
            var perLayer = [[Double]](repeating: [], count: L)
            var totals: [Double] = []
            var stamps = [Double](repeating: 0, count: L + 1)
            var layerSums = [Double](repeating: 0, count: L)
            for rep in 0...repeats {   // the first run warms up
                cache.count = start
                for l in 0..<L { layerSums[l] = 0 }
                let t0 = now()
                for i in 0..<tokens {
                    _ = try model.decode(Int32((i * 31 + 5) % min(c.vocabSize, 32000)), cache: cache) { point, _ in
                        switch point {
                        case .embedding: stamps[0] = now()
                        case .residPost(let l): stamps[l + 1] = now()
                        default: break
                        }
                    }
                    for l in 0..<L { layerSums[l] += stamps[l + 1] - stamps[l] }
                }
                if rep > 0 {
                    totals.append(now() - t0)
                    for l in 0..<L { perLayer[l].append(layerSums[l]) }
                }
            }
            let n = Double(tokens)
            let total = median(totals), layerMedians = perLayer.map(median)
            let layers = layerMedians.enumerated().map { l, s in
                BenchReport.Layer(layer: l, ms_per_token: s * 1e3 / n, tokens_per_second: n / s)
            }
            // Keys and values of every layer at positions 0...p, for p = start ..< start + tokens.
            let kv = Double(2 * L * c.kvDim * 4) * (Double(start) + (n + 1) / 2)
            let tps = n / total
            let typical = median(layerMedians)
            let fixed = max(0, total - layerMedians.reduce(0, +))
            let fullTPS = n / (fixed + typical * Double(depth))
            let fullBytes = Double(fixedBytes + layerBytes * depth) + kv / Double(L) * Double(depth)
            out.append(DecodeReport.Context(
                context: start, tokens: tokens, model_tokens_per_second: tps, ms_per_token: total * 1e3 / n, layers: layers,
                kv_bytes_per_token: kv, bandwidth_fraction: (Double(weightBytes) + kv) * tps / (bandwidth * 1e9),
                full_depth_tokens_per_second: fullTPS, full_depth_bandwidth_fraction: fullBytes * fullTPS / (bandwidth * 1e9)))
        }
        return DecodeReport(contexts: out, weight_bytes_per_token: weightBytes, layer_weight_bytes: layerBytes,
                            full_depth_layers: depth, full_depth_weight_bytes_per_token: fixedBytes + layerBytes * depth,
                            memory_bandwidth_gbps: bandwidth, threads: model.pool.threadCount,
                            backend: model.engine.backend.rawValue, kernel: model.engine.description, repeats: repeats)
    }

    /// GB/s of reading `bytes` of memory with every thread of `pool` (each sums a contiguous part), best of 5.
    public static func memoryBandwidth(pool: ThreadPool, bytes: Int) -> Double {
        let n = bytes / 4
        let buf = FloatBuffer(count: n)   // zero-filled: every page is touched before timing
        let parts = pool.threadCount * 4
        let sums = FloatBuffer(count: parts)
        var best = 0.0
        for _ in 0..<6 {
            let t0 = now()
            pool.parallelFor(parts) { i in
                let lo = n * i / parts, hi = n * (i + 1) / parts
                sums[i] = ForwardOps.readSum(buf.pointer + lo, hi - lo)
            }
            best = max(best, Double(n * 4) / (now() - t0) / 1e9)
        }
        return best
    }
}
