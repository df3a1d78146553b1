// The table of weight storage types, ggml style: each type is one row of traits (block size, bytes per
// block, dequantize, quantize, dot) with a scalar reference implementation that the fast implementation is
// tested against. A new type is a new row.

public typealias ToFloatRow = @Sendable (_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) -> Void
public typealias FromFloatRow = @Sendable (_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) -> Void
/// Dot product of `count` stored elements with an f32 vector.
public typealias DotRow = @Sendable (_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float

public struct QuantType: Sendable, CustomStringConvertible {
    public enum ID: String, Sendable, CaseIterable, Hashable {
        case f32 = "F32", f16 = "F16", bf16 = "BF16", q8_0 = "Q8_0"
    }

    public let id: ID
    /// Elements per block; a row's length must be a multiple of it.
    public let blockSize: Int
    /// Bytes one block occupies in storage.
    public let bytesPerBlock: Int
    /// Fast conversion of `count` elements (a multiple of `blockSize`) to f32.
    public let toFloat: ToFloatRow
    /// Fast conversion from f32 (rounding / quantizing as the format defines).
    public let fromFloat: FromFloatRow
    public let dot: DotRow
    /// Scalar reference implementations (the definition of the format).
    public let toFloatReference: ToFloatRow
    public let fromFloatReference: FromFloatRow
    public let dotReference: DotRow

    public var description: String { id.rawValue }

    public func byteCount(elements: Int) -> Int { elements / blockSize * bytesPerBlock }

    public static func of(_ id: ID) -> QuantType {
        switch id {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        }
    }

    public static let all: [QuantType] = ID.allCases.map(QuantType.of)

    /// A row whose reference dot is "dequantize, then multiply".
    static func dotByDequantizing(_ toFloat: @escaping ToFloatRow) -> DotRow {
        { row, x, n in
            var tmp = [Float](repeating: 0, count: n)
            toFloat(row, &tmp, n)
            var s: Float = 0
            for i in 0..<n { s += tmp[i] * x[i] }
            return s
        }
    }

    public static let f32 = QuantType(
        id: .f32, blockSize: 1, bytesPerBlock: 4,
        toFloat: { RowConvert.copyF32($0, $1, $2) }, fromFloat: { RowConvert.storeF32($0, $1, $2) },
        dot: { RowDot.f32($0, $1, $2) },
        toFloatReference: { src, dst, n in
            for i in 0..<n { dst[i] = src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
        },
        fromFloatReference: { src, dst, n in
            for i in 0..<n { dst.storeBytes(of: src[i], toByteOffset: 4 * i, as: Float.self) }
        },
        dotReference: { row, x, n in
            var s: Float = 0
            for i in 0..<n { s += row.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) * x[i] }
            return s
        })

    public static let f16 = QuantType(
        id: .f16, blockSize: 1, bytesPerBlock: 2,
        toFloat: { RowConvert.f16ToF32($0, $1, $2) }, fromFloat: { RowConvert.f32ToF16($0, $1, $2) },
        dot: { RowDot.f16($0, $1, $2) },
        toFloatReference: { src, dst, n in
            for i in 0..<n { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        },
        fromFloatReference: { src, dst, n in
            for i in 0..<n { dst.storeBytes(of: floatToF16(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
        },
        dotReference: dotByDequantizing { src, dst, n in
            for i in 0..<n { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        })

    public static let bf16 = QuantType(
        id: .bf16, blockSize: 1, bytesPerBlock: 2,
        toFloat: { RowConvert.bf16ToF32($0, $1, $2) }, fromFloat: { RowConvert.f32ToBF16($0, $1, $2) },
        dot: { RowDot.bf16($0, $1, $2) },
        toFloatReference: { src, dst, n in
            for i in 0..<n { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        },
        fromFloatReference: { src, dst, n in
            for i in 0..<n { dst.storeBytes(of: floatToBF16(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
        },
        dotReference: dotByDequantizing { src, dst, n in
            for i in 0..<n { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        })

    /// llama.cpp's Q8_0: blocks of 32 weights stored as an f16 scale d = max|x| / 127 followed by 32 int8
    /// q = round(x / d) (half away from zero); x ≈ d · q.
    public static let q8_0 = QuantType(
        id: .q8_0, blockSize: Q8_0.blockSize, bytesPerBlock: Q8_0.blockBytes,
        toFloat: { Q8_0.dequantize($0, $1, $2) }, fromFloat: { Q8_0.quantize($0, $1, $2) },
        dot: { Q8_0.dot($0, $1, $2) },
        toFloatReference: { Q8_0.dequantizeReference($0, $1, $2) },
        fromFloatReference: { Q8_0.quantizeReference($0, $1, $2) },
        dotReference: dotByDequantizing { Q8_0.dequantizeReference($0, $1, $2) })
}

/// Dot products of stored rows with f32 vectors.
enum RowDot {
    static func f32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            acc += row.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                * UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            i += 8
        }
        var s = acc.sum()
        while i < n { s += row.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) * x[i]; i += 1 }
        return s
    }

    static func f16(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var s: Float = 0
        for i in 0..<n { s += f16ToFloat(row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) * x[i] }
        return s
    }

    static func bf16(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var s: Float = 0
        for i in 0..<n { s += bf16ToFloat(row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) * x[i] }
        return s
    }
}

/// The Q8_0 block format (ggml `block_q8_0`): `{ f16 d; int8 qs[32]; }`, 34 bytes, no padding.
public enum Q8_0 {
    public static let blockSize = 32
    public static let blockBytes = 34

    @inline(__always)
    static func scale(_ block: UnsafeRawPointer) -> Float { f16ToFloat(block.loadUnaligned(as: UInt16.self)) }

    static func dequantizeReference(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<(n / blockSize) {
            let block = src + b * blockBytes
            let d = scale(block)
            for j in 0..<blockSize {
                dst[b * blockSize + j] = Float(block.load(fromByteOffset: 2 + j, as: Int8.self)) * d
            }
        }
    }

    /// ggml's quantize_row_q8_0_ref.
    static func quantizeReference(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ n: Int) {
        for b in 0..<(n / blockSize) {
            let x = src + b * blockSize
            var amax: Float = 0
            for j in 0..<blockSize { amax = max(amax, abs(x[j])) }
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            let block = dst + b * blockBytes
            block.storeBytes(of: floatToF16(d), as: UInt16.self)
            for j in 0..<blockSize {
                // Finite input gives |q| <= 127; NaN/Inf (which callers refuse) must not trap here.
                let v = (x[j] * id).rounded()
                let q: Int8 = v.isNaN ? 0 : Int8(max(-127, min(127, v)))
                block.storeBytes(of: q, toByteOffset: 2 + j, as: Int8.self)
            }
        }
    }

    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<(n / blockSize) {
            let block = src + b * blockBytes
            let d = SIMD8<Float>(repeating: scale(block))
            for g in 0..<4 {
                let q = block.loadUnaligned(fromByteOffset: 2 + 8 * g, as: SIMD8<Int8>.self)
                let f = SIMD8<Float>(Float(q[0]), Float(q[1]), Float(q[2]), Float(q[3]),
                                     Float(q[4]), Float(q[5]), Float(q[6]), Float(q[7]))
                UnsafeMutableRawPointer(dst + b * blockSize + 8 * g).storeBytes(of: f * d, as: SIMD8<Float>.self)
            }
        }
    }

    static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ n: Int) {
        quantizeReference(src, dst, n)
    }

    static func dot(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var total: Float = 0
        for b in 0..<(n / blockSize) {
            let block = row + b * blockBytes
            var acc = SIMD8<Float>()
            for g in 0..<4 {
                let q = block.loadUnaligned(fromByteOffset: 2 + 8 * g, as: SIMD8<Int8>.self)
                let f = SIMD8<Float>(Float(q[0]), Float(q[1]), Float(q[2]), Float(q[3]),
                                     Float(q[4]), Float(q[5]), Float(q[6]), Float(q[7]))
                acc += f * UnsafeRawPointer(x + b * blockSize + 8 * g).loadUnaligned(as: SIMD8<Float>.self)
            }
            total += acc.sum() * scale(block)
        }
        return total
    }
}

extension QuantType {
    /// Calls `body` with `values` in this storage type: the f32 values themselves, or a temporary converted
    /// copy (the writers' one conversion path).
    public func withStored<R>(_ values: UnsafeBufferPointer<Float>, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        guard let base = values.baseAddress, !values.isEmpty else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        if id == .f32 { return try body(UnsafeRawBufferPointer(values)) }
        let bytes = byteCount(elements: values.count)
        let tmp = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
        defer { tmp.deallocate() }
        fromFloat(base, tmp, values.count)
        return try body(UnsafeRawBufferPointer(start: tmp, count: bytes))
    }
}
