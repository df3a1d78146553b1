import Foundation
import Quant
import Formats
import Testing

@Suite struct QuantTypeTests {
    @Test("every row's fast dequantize, quantize and dot equal its scalar reference", arguments: QuantType.all)
    func fastMatchesReference(type t: QuantType) {
        let n = 4096   // a multiple of every block size
        var rng = SplitMix(seed: 42)
        // Stored rows from random bytes (block scales kept finite), starting at an odd address as in mapped files.
        var raw = [UInt8](repeating: 0, count: t.byteCount(elements: n) + 1)
        for i in raw.indices { raw[i] = UInt8(truncatingIfNeeded: rng.next()) }
        if t.id == .q8_0 {
            for b in 0..<(n / 32) { let h = floatToF16(Float(rng.next() % 1000) / 1e4); raw[1 + 34 * b] = UInt8(h & 0xFF); raw[2 + 34 * b] = UInt8(h >> 8) }
        }
        if t.id == .f32 || t.id == .f16 || t.id == .bf16 {   // no NaN patterns: compare values, not payloads
            var x = (0..<n).map { _ in Float(Int(rng.next() % 2001) - 1000) / 37 }
            raw.withUnsafeMutableBytes { r in t.fromFloatReference(&x, r.baseAddress! + 1, n) }
        }
        var fast = [Float](repeating: 0, count: n), ref = [Float](repeating: 1, count: n)
        let x = (0..<n).map { _ in Float(Int(rng.next() % 2001) - 1000) / 300 }
        var dotFast: Float = 0, dotRef: Float = 0
        raw.withUnsafeBytes { r in
            t.toFloat(r.baseAddress! + 1, &fast, n)
            t.toFloatReference(r.baseAddress! + 1, &ref, n)
            dotFast = t.dot(r.baseAddress! + 1, x, n)
            dotRef = t.dotReference(r.baseAddress! + 1, x, n)
        }
        #expect(zip(fast, ref).allSatisfy { $0.bitPattern == $1.bitPattern }, "\(t) dequantize")
        #expect(abs(dotFast - dotRef) <= 1e-4 * max(1, abs(dotRef)), "\(t) dot \(dotFast) vs \(dotRef)")
        let bytes = t.byteCount(elements: n)
        var outFast = [UInt8](repeating: 0, count: bytes), outRef = [UInt8](repeating: 1, count: bytes)
        let y = x.map { $0 * 3 }
        t.fromFloat(y, &outFast, n)
        t.fromFloatReference(y, &outRef, n)
        #expect(outFast == outRef, "\(t) quantize")
    }

    @Test("Q8_0 is ggml's block: f16 d = max|x|/127, q = round(x/d) half away from zero")
    func q8_0Definition() {
        var x = [Float](repeating: 0, count: 64)
        for j in 0..<32 { x[j] = Float(j - 16) * 0.25 }   // max |x| = 4 -> d = 4/127
        x[5] = 2.5 * 4 / 127                                 // exactly half way -> rounds away from zero to 3
        var out = [UInt8](repeating: 0, count: 68)
        QuantType.q8_0.fromFloat(x, &out, 64)
        #expect(UInt16(out[0]) | UInt16(out[1]) << 8 == floatToF16(4 / 127))
        #expect(Int8(bitPattern: out[2]) == -127 && Int8(bitPattern: out[2 + 5]) == 3 && Int8(bitPattern: out[2 + 16]) == 0)
        #expect(out[34] == 0 && out[35] == 0 && out[36...].allSatisfy { $0 == 0 })   // an all-zero block: d = 0, q = 0
        var back = [Float](repeating: 1, count: 64)
        QuantType.q8_0.toFloat(out, &back, 64)
        #expect(zip(back.prefix(32), x.prefix(32)).allSatisfy { abs($0 - $1) <= 0.5 * 4 / 127 + 1e-3 })
    }

    @Test("16-bit types round-trip exactly through f32")
    func roundTrip() {
        for bits in UInt16.min...UInt16.max {
            let b = bf16ToFloat(bits)
            if !b.isNaN { #expect(floatToBF16(b) == bits) } else { #expect(bf16ToFloat(floatToBF16(b)).isNaN) }
            let h = f16ToFloat(bits)
            if !h.isNaN { #expect(floatToF16(h) == bits) }
        }
    }

    @Test("bf16 narrowing rounds to nearest, ties to even")
    func bf16Rounding() {
        #expect(floatToBF16(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // tie, even below
        #expect(floatToBF16(Float(bitPattern: 0x3F81_8000)) == 0x3F82)  // tie, even above
        #expect(floatToBF16(Float(bitPattern: 0x3F80_8001)) == 0x3F81)  // above the tie
        #expect(floatToBF16(Float(bitPattern: 0x3F80_7FFF)) == 0x3F80)
        #expect(floatToBF16(.infinity) == 0x7F80)
        #expect(floatToBF16(Float(bitPattern: 0x7F7F_FFFF)) == 0x7F80)  // max float rounds to inf
        #expect(bf16ToFloat(floatToBF16(.nan)).isNaN)
        #expect(floatToF16(65520) == Float16.infinity.bitPattern && floatToF16(1 + 1.0 / 2048) == 0x3C00)
    }
}

@Suite struct SafeTensorsTests {
    func tmp(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("quant-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name).path
    }

    @Test func writeThenRead() throws {
        let path = tmp("a.safetensors")
        let w = try SafeTensorsWriter(path: path, tensors: [
            .init("x", .f32, [2, 3]), .init("empty", .f32, [0]), .init("h", .bf16, [3]), .init("ids", .i64, [2]),
        ], metadata: ["k": "v \"quoted\"\n"])
        try w.write([Float](arrayLiteral: 1, 2, 3, 4, 5, 6))
        try [Float](arrayLiteral: 1.5, -2, 3e-3).withUnsafeBufferPointer { try w.writeFloats($0) }
        try w.write([Int64](arrayLiteral: 7, -1))
        #expect(!FileManager.default.fileExists(atPath: path), "visible before commit")
        try w.commit()
        let f = try SafeTensorsFile(path: path)
        #expect(f.metadata["k"] == "v \"quoted\"\n")
        #expect(try f.floats("x") == [1, 2, 3, 4, 5, 6])
        #expect(try f.floats("h") == [1.5, -2, bf16ToFloat(floatToBF16(3e-3))])
        #expect(try f.integers("ids") == [7, -1])
        #expect(try f.info("empty").shape == [0])
        #expect(f.names == ["x", "empty", "h", "ids"])
        // The data section is 8-byte aligned.
        #expect(try f.info("x").fileOffset % 8 == 0)
    }

    @Test func incompleteWriteIsRefusedAndLeavesNothing() throws {
        let path = tmp("b.safetensors")
        do {
            let w = try SafeTensorsWriter(path: path, tensors: [.init("x", .f32, [4])])
            try w.write([Float](arrayLiteral: 1, 2))
            #expect(throws: SafeTensorsError.self) { try w.commit() }
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        let dir = (path as NSString).deletingLastPathComponent
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "temporary file left behind")
    }

    func file(header: String, data: [UInt8] = [], lengthOverride: UInt64? = nil) -> String {
        let path = tmp("c.safetensors")
        var bytes = withUnsafeBytes(of: (lengthOverride ?? UInt64(header.utf8.count)).littleEndian) { Array($0) }
        bytes += Array(header.utf8) + data
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func reason(_ path: String) -> SafeTensorsError? {
        do { _ = try SafeTensorsFile(path: path); return nil } catch { return error as? SafeTensorsError }
    }

    @Test func corruptHeaders() {
        let ok = #"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        #expect(reason(file(header: ok, data: [UInt8](repeating: 0, count: 8))) == nil)
        let cases: [(String, [UInt8], UInt64?, String, String?)] = [
            (ok, [UInt8](repeating: 0, count: 4), nil, "run past the end", "t"),
            (ok, [], 1 << 40, "absurd", nil),
            (ok, [], 1000, "truncated", nil),
            ("not json", [], nil, "not a JSON object", nil),
            (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]"#, [], nil, "not valid JSON", nil),
            (#"{"t":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}}"#, [UInt8](repeating: 0, count: 8), nil, "unknown dtype", "t"),
            (#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, [UInt8](repeating: 0, count: 12), nil, "data_offsets span", "t"),
            (#"{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, [UInt8](repeating: 0, count: 8), nil, "invalid dimension", "t"),
            (#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, [UInt8](repeating: 0, count: 8), nil, "reversed", "t"),
            (#"{"t":{"dtype":"F32","shape":[2]}}"#, [], nil, "data_offsets", "t"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
             [UInt8](repeating: 0, count: 8), nil, "overlaps", "b"),
            (#"{"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, [UInt8](repeating: 0, count: 8), nil, "overflows", "t"),
            (#"{"__metadata__":{"a":1}}"#, [], nil, "not a string", nil),
        ]
        for (header, data, len, text, tensor) in cases {
            let path = file(header: header, data: data, lengthOverride: len)
            let e = reason(path)
            #expect(e?.reason.contains(text) == true && e?.tensor == tensor && e?.file == path,
                    "header \(header): got \(String(describing: e))")
        }
        let tiny = tmp("d.safetensors")
        FileManager.default.createFile(atPath: tiny, contents: Data([1, 2, 3]))
        #expect(reason(tiny)?.reason.contains("truncated") == true)
        let empty = tmp("e.safetensors")
        FileManager.default.createFile(atPath: empty, contents: Data())
        #expect(throws: FileError.self) { _ = try SafeTensorsFile(path: empty) }
    }
}

@Suite struct ThreadPoolTests {
    @Test func everyIndexOnceAndNestedCallsDoNotDeadlock() {
        let pool = ThreadPool(threads: 4)
        for n in [1, 2, 3, 17, 1000] {
            var hits = [Int](repeating: 0, count: n)
            var threads = Set<Int>()
            let lock = NSLock()
            hits.withUnsafeMutableBufferPointer { h in
                pool.parallelFor(n) { i, t in
                    h[i] += 1
                    lock.lock(); threads.insert(t); lock.unlock()
                    if i == 0 { pool.parallelFor(3) { _ in } }   // re-entrant: runs serially
                }
            }
            #expect(hits.allSatisfy { $0 == 1 })
            #expect(threads.allSatisfy { (0..<4).contains($0) })
        }
        var covered = [Int](repeating: 0, count: 103)
        covered.withUnsafeMutableBufferPointer { c in
            pool.parallelRanges(103, chunksPerThread: 3) { r in for i in r { c[i] += 1 } }
        }
        #expect(covered.allSatisfy { $0 == 1 })
    }
}

@Suite struct BLASTests {
    @Test("y = x · Wᵀ through sgemm and sgemv equals the naive product")
    func matmul() {
        for (m, n, k) in [(1, 5, 7), (3, 4, 9), (16, 33, 20)] {
            let x = (0..<(m * k)).map { Float(($0 * 37) % 11) - 5 }
            let w = (0..<(n * k)).map { Float(($0 * 13) % 7) - 3 }
            var y = [Float](repeating: 1, count: m * n)
            BLAS.matmulTransposedB(x, w, &y, m: m, n: n, k: k)
            for i in 0..<m { for j in 0..<n {
                let e = (0..<k).reduce(Float(0)) { $0 + x[i * k + $1] * w[j * k + $1] }
                #expect(y[i * n + j] == e)
            } }
            BLAS.matmulTransposedB(x, w, &y, m: m, n: n, k: k, accumulate: true)
            #expect(y[0] == 2 * (0..<k).reduce(Float(0)) { $0 + x[$1] * w[$1] })
        }
    }
}

/// A small deterministic generator for test data.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
