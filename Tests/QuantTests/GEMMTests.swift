import Foundation
import Quant
import Formats
import Testing

/// Every int8 kernel against a scalar reference computed in Double from the same stored weights.
@Suite struct GEMMTests {
    struct Case: CustomStringConvertible {
        let m: Int, n: Int, k: Int
        var description: String { "\(m)x\(n)x\(k)" }
    }
    // Row counts around the 4- and 6-row tiles, column counts around the 16/32-column panels, inner
    // sizes around the kernels' chunking (1024 inputs for VNNI, 256 for AVX2).
    static let cases = [Case(m: 1, n: 16, k: 32), Case(m: 3, n: 45, k: 64), Case(m: 4, n: 32, k: 96),
                        Case(m: 7, n: 100, k: 1056), Case(m: 13, n: 64, k: 288), Case(m: 6, n: 17, k: 2080), Case(m: 300, n: 40, k: 64)]

    static let engines: [Q8Kernel] = Q8Kernel.supported

    func data(_ c: Case, seed: UInt64) -> (x: [Float], w: [Float]) {
        var rng = SplitMix(seed: seed)
        func r() -> Float { Float(Int(rng.next() % 20001) - 10000) / 10000 }
        var x = (0..<(c.m * c.k)).map { _ in r() * 3 }
        x[0] = 0   // a zero and a zero block
        for i in 0..<min(32, c.k) where c.m > 1 { x[c.k + i] = 0 }
        let w = (0..<(c.n * c.k)).map { _ in r() * 0.2 }
        return (x, w)
    }

    /// ggml-style activation quantization in scalar code: the W8A8 kernel's input as it should see it.
    func quantizeActivations(_ x: [Float], bits: Int) -> [Float] {
        var out = x
        for start in stride(from: 0, to: x.count, by: 32) {
            let amax = x[start..<(start + 32)].map(abs).max()!
            let d = amax / Float((1 << (bits - 1)) - 1)
            let id: Float = d > 0 ? 1 / d : 0
            for i in start..<(start + 32) { out[i] = (x[i] * id).rounded(.toNearestOrEven) * d }
        }
        return out
    }

    func reference(_ x: [Float], _ w: [Float], _ c: Case) -> [Double] {
        var y = [Double](repeating: 0, count: c.m * c.n)
        for i in 0..<c.m { for j in 0..<c.n {
            var s = 0.0
            for t in 0..<c.k { s += Double(x[i * c.k + t]) * Double(w[j * c.k + t]) }
            y[i * c.n + j] = s
        } }
        return y
    }

    @Test("packing keeps the Q8_0 values exactly")
    func packing() {
        let c = Case(m: 1, n: 45, k: 96)
        let (_, w) = data(c, seed: 1)
        let pool = ThreadPool(threads: 2)
        let packed = PackedQ8Matrix(quantizing: w, rows: c.n, cols: c.k, pool: pool)
        var viaTable = [Float](repeating: 0, count: c.n * c.k)
        var q = [UInt8](repeating: 0, count: QuantType.q8_0.byteCount(elements: c.n * c.k))
        QuantType.q8_0.fromFloat(w, &q, c.n * c.k)
        QuantType.q8_0.toFloat(q, &viaTable, c.n * c.k)
        var unpacked = [Float](repeating: 1, count: c.n * c.k)
        packed.dequantizeRows(0, c.n, into: &unpacked)
        #expect(unpacked == viaTable)
        #expect(packed.panels == 4 && packed.byteCount == 4 * 3 * 544)
    }

    @Test("1, 2 and 3 threads give bit-identical products: f32 (partitioned sgemm) and every int8 kernel",
          arguments: [nil] + engines.map(Optional.some))
    func threadCountDoesNotChangeBits(_ kernel: Q8Kernel?) {
        // Shapes crossing the fixed blocks (256 rows and columns of the f32 product, 64-row weight tiles of the
        // blas path, 252-row blocks of the int8 kernels), with a single row (sgemv) among them.
        for c in [Case(m: 301, n: 300, k: 64), Case(m: 1, n: 520, k: 96), Case(m: 517, n: 80, k: 128), Case(m: 37, n: 45, k: 320)] {
            let (x, w) = data(c, seed: UInt64(c.m * 7 + c.n))
            var results: [[Float]] = []
            for threads in [1, 2, 3] {
                let pool = ThreadPool(threads: threads)
                let engine = GEMMEngine(pool: pool, backend: kernel == .portable ? .blas : .simd, kernel: kernel ?? .detected)
                let weights: Linear = kernel == nil
                    ? .f32(Matrix(FloatBuffer(w), rows: c.n, cols: c.k))
                    : .q8_0(PackedQ8Matrix(quantizing: w, rows: c.n, cols: c.k, pool: pool))
                var y = [Float](repeating: 0.25, count: c.m * c.n)
                engine.reserve(rows: c.m, cols: c.k, maxOut: c.n)
                x.withUnsafeBufferPointer { xp in
                    engine.multiply(engine.prepare(xp.baseAddress!, rows: c.m, cols: c.k), weights, &y, ldy: c.n, accumulate: true)
                }
                results.append(y)
            }
            for t in 1..<3 {
                let differ = zip(results[0], results[t]).filter { $0.bitPattern != $1.bitPattern }.count
                #expect(differ == 0, "\(kernel?.rawValue ?? "f32") \(c): \(differ) values differ between 1 and \(t + 1) threads")
            }
        }
    }

    @Test("kernels match the scalar reference", arguments: engines, cases)
    func kernel(_ kernel: Q8Kernel, _ c: Case) {
        let pool = ThreadPool(threads: 2)
        let engine = GEMMEngine(pool: pool, backend: kernel == .portable ? .blas : .simd, kernel: kernel)
        let (x, w) = data(c, seed: UInt64(c.m * 1000 + c.n))
        let packed = PackedQ8Matrix(quantizing: w, rows: c.n, cols: c.k, pool: pool)
        var wq = [Float](repeating: 0, count: c.n * c.k)
        packed.dequantizeRows(0, c.n, into: &wq)
        let xin = kernel == .avx512vnniA8 ? quantizeActivations(x, bits: 8)
            : kernel == .avx512vnniA16 || kernel == .avx2A16 ? quantizeActivations(x, bits: 16) : x
        let ref = reference(xin, wq, c)
        let scale = ref.map(abs).max()!

        // Output with a wider row stride, pre-filled, to check ldy and accumulate.
        let ldy = c.n + 3
        var y = [Float](repeating: 0.5, count: c.m * ldy)
        engine.reserve(rows: c.m, cols: c.k, maxOut: c.n)
        x.withUnsafeBufferPointer { xp in
            let p = engine.prepare(xp.baseAddress!, rows: c.m, cols: c.k)
            engine.multiply(p, .q8_0(packed), &y, ldy: ldy, accumulate: true)
        }
        var worst = 0.0
        for i in 0..<c.m { for j in 0..<ldy {
            let got = Double(y[i * ldy + j])
            if j < c.n { worst = max(worst, abs(got - 0.5 - ref[i * c.n + j])) } else { #expect(got == 0.5, "wrote past column \(c.n)") }
        } }
        #expect(worst <= 1e-5 * scale, "\(kernel) \(c): max error \(worst) (scale \(scale))")

        // A subset of rows (as the last layer uses), overwriting.
        if c.m > 2 {
            var z = [Float](repeating: 9, count: 2 * c.n)
            x.withUnsafeBufferPointer { xp in
                let p = engine.prepare(xp.baseAddress!, rows: c.m, cols: c.k)
                engine.multiply(p.rows((c.m - 2)..<c.m), .q8_0(packed), &z, ldy: c.n, accumulate: false)
            }
            for i in 0..<2 { for j in 0..<c.n {
                #expect(abs(Double(z[i * c.n + j]) - ref[(c.m - 2 + i) * c.n + j]) <= 1e-5 * scale)
            } }
        }
    }

    @Test("the CPU's kernels are detected")
    func detection() {
        #expect(Q8Kernel.supported.last == .portable)
        #expect(Q8Kernel.supported.contains(Q8Kernel.detected))
    }
}
