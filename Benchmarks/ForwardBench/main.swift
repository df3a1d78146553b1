// fp32 forward-pass throughput (the OpenBLAS path) on synthetic weights of a preset's exact shapes.
//
//   swift run -c release llamaprobe-bench [--preset llama-2-13b] [--layers 1] [--tokens 128]
//                                         [--threads N] [--repeats 5]
//
// Prints, per run, ms per layer and tokens/s per layer; then the median over runs, the achieved GFLOP/s
// of the layer (projection + attention FLOPs) and, measured in the same run on the same shapes, OpenBLAS
// sgemm's GFLOP/s on the layer's seven projections alone.
import Foundation
import Model
import Quant

var preset = "llama-2-13b", layers = 1, tokens = 128, repeats = 5, threads = ThreadPool.defaultThreadCount
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard let v = args.popFirst() else { fatalError("missing value for \(a)") }
    switch a {
    case "--preset": preset = v
    case "--layers": layers = Int(v)!
    case "--tokens": tokens = Int(v)!
    case "--repeats": repeats = Int(v)!
    case "--threads": threads = Int(v)!
    default: fatalError("unknown option \(a)")
    }
}
guard var config = Preset.named(preset)?.config else { fatalError("unknown preset \(preset)") }
config.numHiddenLayers = layers
let pool = ThreadPool(threads: threads)
BLAS.setThreads(threads)
let weights = LlamaWeights.synthetic(config: config, seed: 1, pool: pool)
let model = LlamaModel(weights: weights, pool: pool)
let ids = (0..<tokens).map { Int32(3 + $0 * 7 % 4000) }

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let t0 = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
}
func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

// FLOPs of one layer for T tokens: 2·T·(params of the 7 projections) + causal attention (QKᵀ and PV).
let c = config, T = Double(tokens)
let projParams = Double(c.hiddenSize * (2 * c.qDim + 2 * c.kvDim) + 3 * c.hiddenSize * c.intermediateSize)
let attnFlops = 2 * 2 * Double(c.numAttentionHeads * c.headDimension) * T * (T + 1) / 2
let layerFlops = 2 * T * projParams + attnFlops

print("fp32 forward, \(preset) shapes, \(layers) layer(s), \(tokens) tokens, \(threads) thread(s)")
_ = try model.forward(ids, positions: .all) { _, _ in }   // warm-up
var perLayer: [Double] = []
for r in 0..<repeats {
    let s = try seconds { _ = try model.forward(ids, positions: .all) { _, _ in } }
    perLayer.append(s / Double(layers))
    print(String(format: "  run %d: %.1f ms/layer, %.1f tokens/s per layer", r + 1, s / Double(layers) * 1e3, T / (s / Double(layers))))
}

// OpenBLAS sgemm on the same projection shapes (x[T, in] · W[out, in]ᵀ), same thread count.
let shapes = [(c.qDim, c.hiddenSize), (c.kvDim, c.hiddenSize), (c.kvDim, c.hiddenSize), (c.hiddenSize, c.qDim),
              (c.intermediateSize, c.hiddenSize), (c.intermediateSize, c.hiddenSize), (c.hiddenSize, c.intermediateSize)]
let maxIn = shapes.map(\.1).max()!, maxOut = shapes.map(\.0).max()!
let x = FloatBuffer(count: tokens * maxIn), y = FloatBuffer(count: tokens * maxOut)
for i in 0..<x.count { x[i] = Float(i % 17) * 0.01 }
let l0 = weights.layers[0]
let mats = [l0.wq, l0.wk, l0.wv, l0.wo, l0.gate, l0.up, l0.down]
var sgemm: [Double] = []
for _ in 0..<repeats {
    sgemm.append(seconds { for m in mats { m.apply(x.pointer, y.pointer, rows: tokens) } })
}
let med = median(perLayer), gemmMed = median(sgemm)
print(String(format: "median: %.1f ms/layer, %.1f tokens/s per layer, %.2f tokens/s for a %d-layer model",
             med * 1e3, T / med, T / (med * Double(Preset.named(preset)!.config.numHiddenLayers)),
             Preset.named(preset)!.config.numHiddenLayers))
print(String(format: "layer: %.1f GFLOP/s; sgemm on its projections alone: %.1f GFLOP/s (layer/sgemm time ratio %.2f)",
             layerFlops / med / 1e9, 2 * T * projParams / gemmMed / 1e9, gemmMed / med))
