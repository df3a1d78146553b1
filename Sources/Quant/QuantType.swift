// The table of weight storage types, ggml style: each type is one row of traits with a scalar reference
// implementation that the fast (vectorised) implementation is tested against. A new type is a new row.

public typealias ToFloatRow = @Sendable (_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) -> Void
public typealias FromFloatRow = @Sendable (_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) -> Void

public struct QuantType: Sendable, CustomStringConvertible {
    public enum ID: String, Sendable, CaseIterable, Hashable {
        case f32 = "F32", f16 = "F16", bf16 = "BF16"
    }

    public let id: ID
    /// Elements per block; a row's length must be a multiple of it.
    public let blockSize: Int
    /// Bytes one block occupies in storage.
    public let bytesPerBlock: Int
    /// Fast conversion of `count` elements (a multiple of `blockSize`) to f32.
    public let toFloat: ToFloatRow
    /// Fast conversion from f32 (rounding as the format defines).
    public let fromFloat: FromFloatRow
    /// Scalar reference implementations (the definition of the format).
    public let toFloatReference: ToFloatRow
    public let fromFloatReference: FromFloatRow

    public var description: String { id.rawValue }

    public func byteCount(elements: Int) -> Int { elements / blockSize * bytesPerBlock }

    public static func of(_ id: ID) -> QuantType {
        switch id {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        }
    }

    public static let f32 = QuantType(
        id: .f32, blockSize: 1, bytesPerBlock: 4,
        toFloat: { RowConvert.copyF32($0, $1, $2) }, fromFloat: { RowConvert.storeF32($0, $1, $2) },
        toFloatReference: { src, dst, n in
            for i in 0..<n { dst[i] = src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
        },
        fromFloatReference: { src, dst, n in
            for i in 0..<n { dst.storeBytes(of: src[i], toByteOffset: 4 * i, as: Float.self) }
        })

    public static let f16 = QuantType(
        id: .f16, blockSize: 1, bytesPerBlock: 2,
        toFloat: { RowConvert.f16ToF32($0, $1, $2) }, fromFloat: { RowConvert.f32ToF16($0, $1, $2) },
        toFloatReference: { src, dst, n in
            for i in 0..<n { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        },
        fromFloatReference: { src, dst, n in
            for i in 0..<n { dst.storeBytes(of: floatToF16(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
        })

    public static let bf16 = QuantType(
        id: .bf16, blockSize: 1, bytesPerBlock: 2,
        toFloat: { RowConvert.bf16ToF32($0, $1, $2) }, fromFloat: { RowConvert.f32ToBF16($0, $1, $2) },
        toFloatReference: { src, dst, n in
            for i in 0..<n { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        },
        fromFloatReference: { src, dst, n in
            for i in 0..<n { dst.storeBytes(of: floatToBF16(src[i]), toByteOffset: 2 * i, as: UInt16.self) }
        })

    public static let all: [QuantType] = ID.allCases.map(QuantType.of)
}
