// GEMM kernels against OpenBLAS sgemm on the projection shapes of a preset's layer, in one run.
//
//   swift build -c release --product llamaprobe-kernel-bench
//   .build/release/llamaprobe-kernel-bench [--preset llama-2-13b] [--tokens 128] [--threads 2] [--repeats 5]
//
// For each shape (x [T, in] · W[out, in]ᵀ) it prints the median GFLOP/s of: OpenBLAS sgemm on f32 weights,
// and our Q8_0 weights through every kernel this CPU supports (avx512vnni W8A8, avx2 W8A32) and through
// the blas fallback (tiles dequantized, then sgemm); ratios are to sgemm in the same run.
import Foundation
import Model
import Quant
import Formats

var preset = "llama-2-13b", tokens = 128, repeats = 5, threads = ThreadPool.defaultThreadCount
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard let v = args.popFirst() else { fatalError("missing value for \(a)") }
    switch a {
    case "--preset": preset = v
    case "--tokens": tokens = Int(v)!
    case "--repeats": repeats = Int(v)!
    case "--threads": threads = Int(v)!
    default: fatalError("unknown option \(a)")
    }
}
guard let c = Preset.named(preset)?.config else { fatalError("unknown preset \(preset)") }
let pool = ThreadPool(threads: threads)
func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

let shapes = [("q_proj", c.qDim, c.hiddenSize), ("k_proj", c.kvDim, c.hiddenSize), ("o_proj", c.hiddenSize, c.qDim),
              ("gate/up", c.intermediateSize, c.hiddenSize), ("down", c.hiddenSize, c.intermediateSize)]
print("\(preset) projection shapes, \(tokens) tokens, \(threads) thread(s), median of \(repeats); GFLOP/s (ratio to sgemm)")
let engines: [(String, GEMMEngine)] = Q8Kernel.supported.filter { $0 != .portable }.map { ($0.rawValue, GEMMEngine(pool: pool, kernel: $0)) }
    + [("blas-dequant", GEMMEngine(pool: pool, backend: .blas))]
print("shape          out × in        sgemm  " + engines.map { $0.0.padding(toLength: 20, withPad: " ", startingAt: 0) }.joined())
var totals = [Double](repeating: 0, count: engines.count + 1)
for (name, n, k) in shapes {
    let x = FloatBuffer(count: tokens * k), y = FloatBuffer(count: tokens * n), w = FloatBuffer(count: n * k)
    for i in 0..<x.count { x[i] = Float((i * 37) % 101) * 0.02 - 1 }
    pool.parallelRanges(w.count, chunksPerThread: 2) { r in for i in r { w[i] = Float((i &* 2654435761) % 1001) * 1e-4 - 0.05 } }
    let packed = PackedQ8Matrix(quantizing: w.pointer, rows: n, cols: k, pool: pool)
    let flops = 2.0 * Double(tokens * n * k)
    func time(_ body: () -> Void) -> Double {
        body()
        return median((0..<repeats).map { _ in let t = now(); body(); return now() - t })
    }
    let tf = time { BLAS.matmulTransposedB(x.pointer, w.pointer, y.pointer, m: tokens, n: n, k: k, pool: pool) }
    var line = "\(name.padding(toLength: 14, withPad: " ", startingAt: 0)) \("\(n) × \(k)".padding(toLength: 14, withPad: " ", startingAt: 0)) \(String(format: "%6.1f", flops / tf / 1e9))  "
    totals[0] += tf
    for (i, (_, e)) in engines.enumerated() {
        e.reserve(rows: tokens, cols: k, maxOut: n)
        let t = time {
            let p = e.prepare(x.pointer, rows: tokens, cols: k)
            e.multiply(p, .q8_0(packed), y.pointer, ldy: n, accumulate: false)
        }
        totals[i + 1] += t
        line += String(format: "%6.1f (%4.2f×)        ", flops / t / 1e9, tf / t)
    }
    print(line)
}
print("layer total (gate/up counted once): sgemm \(String(format: "%.1f ms", totals[0] * 1e3)); " +
      engines.enumerated().map { String(format: "%@ %.1f ms (%.2f×)", $0.element.0, totals[$0.offset + 1] * 1e3, totals[0] / totals[$0.offset + 1]) }.joined(separator: "; "))
