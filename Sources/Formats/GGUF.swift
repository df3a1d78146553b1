// GGUF, llama.cpp's single-file model format (ggml docs/gguf.md), versions 2 and 3, little-endian:
//
//   magic "GGUF" · version u32 · tensor_count u64 · metadata_kv_count u64
//   metadata_kv_count × { key: string · value_type u32 · value }
//   tensor_count × { name: string · n_dims u32 · ne u64[n_dims] (ne[0] = row length) · ggml_type u32 · offset u64 }
//   padding to `general.alignment` (u32 metadata, default 32) · tensor data (each offset a multiple of the alignment)
//
// where a string is a u64 byte count followed by UTF-8 bytes (no terminator) and an array is an element type
// u32, a u64 count and the elements without type tags. Version 2 differs from 3 only in that 3 allows
// big-endian files; version 1 (32-bit counts) is refused.
import Foundation
import Quant

// MARK: - Values

/// The metadata value types of GGUF (`gguf_type`), with their on-disk ids.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// gguf-py's name ("UINT32", "STRING", …).
    public var name: String { "\(self)".uppercased() }

    /// Bytes of one scalar value; nil for strings and arrays.
    public var scalarSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The fewest bytes one value of this type can occupy (bounds element counts against the file size).
    var minimumEncodedSize: Int { scalarSize ?? (self == .string ? 8 : 12) }
}

/// A GGUF metadata value. Arrays carry their element type (every element has that type; nested arrays
/// are arrays of `.array` values, each with its own element type). Nested arrays are valid GGUF and gguf-py
/// reads and writes them, but ggml's C reader (gguf.cpp, llama.cpp) refuses them: files meant for llama.cpp
/// should not contain any.
public enum GGUFValue: Equatable, Sendable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String)
    case array(GGUFValueType, [GGUFValue])
    case uint64(UInt64), int64(Int64), float64(Double)

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        }
    }

    /// The value of any integer type, when it fits in `Int`.
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(exactly: v)
        default: return nil
        }
    }

    /// The value of a float32 or float64 (float64 rounded to Float).
    public var float: Float? {
        switch self {
        case .float32(let v): return v
        case .float64(let v): return Float(v)
        default: return nil
        }
    }

    /// The value of a float32 (exactly) or float64.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return nil
        }
    }

    public var bool: Bool? { if case .bool(let v) = self { return v }; return nil }
    public var string: String? { if case .string(let v) = self { return v }; return nil }
    public var array: [GGUFValue]? { if case .array(_, let v) = self { return v }; return nil }
    public var arrayElementType: GGUFValueType? { if case .array(let t, _) = self { return t }; return nil }

    /// An array of strings.
    public var stringArray: [String]? {
        guard case .array(.string, let v) = self else { return nil }
        let s = v.compactMap(\.string)
        return s.count == v.count ? s : nil
    }

    /// An array of float32 or float64.
    public var floatArray: [Float]? {
        guard case .array(let t, let v) = self, t == .float32 || t == .float64 else { return nil }
        let f = v.compactMap(\.float)
        return f.count == v.count ? f : nil
    }

    /// An array of any integer type whose values all fit in `Int`.
    public var intArray: [Int]? {
        guard case .array(let t, let v) = self, t != .float32, t != .float64, t != .bool, t != .string, t != .array
        else { return nil }
        var out: [Int] = []
        out.reserveCapacity(v.count)
        for x in v {
            guard let i = x.int else { return nil }
            out.append(i)
        }
        return out
    }

    public var description: String {
        switch self {
        case .uint8(let v): return "\(v)"
        case .int8(let v): return "\(v)"
        case .uint16(let v): return "\(v)"
        case .int16(let v): return "\(v)"
        case .uint32(let v): return "\(v)"
        case .int32(let v): return "\(v)"
        case .uint64(let v): return "\(v)"
        case .int64(let v): return "\(v)"
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        case .string(let v): return jsonString(v)
        case .array(let t, let v):
            let shown = v.prefix(8).map(\.description).joined(separator: ", ")
            return "[\(t.name)] × \(v.count) [\(shown)\(v.count > 8 ? ", …" : "")]"
        }
    }
}

// MARK: - Tensor types

/// ggml tensor types (`enum ggml_type` in ggml.h; `GGMLQuantizationType` in gguf-py), with their ids and
/// block layouts (checked against ggml 0.25.3 / llama.cpp 0c1e57098 and gguf-py 0.19.0). Ids 4, 5 and 31...33,
/// 36...38 were removed from ggml and are refused as unknown.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39, nvfp4 = 40, q1_0 = 41, q2_0 = 42

    /// ggml's name ("Q8_0", "BF16", …).
    public var name: String { "\(self)".uppercased() }

    /// (elements per block, bytes per block), as ggml's type traits / gguf-py's GGML_QUANT_SIZES give them.
    private var layout: (Int, Int) {
        let qk = 256   // QK_K
        switch self {
        case .f32: return (1, 4)
        case .f16, .bf16: return (1, 2)
        case .q4_0: return (32, 2 + 16)
        case .q4_1: return (32, 2 + 2 + 16)
        case .q5_0: return (32, 2 + 4 + 16)
        case .q5_1: return (32, 2 + 2 + 4 + 16)
        case .q8_0: return (32, 2 + 32)
        case .q8_1: return (32, 4 + 4 + 32)
        case .q2_K: return (qk, 2 + 2 + qk / 16 + qk / 4)
        case .q3_K: return (qk, 2 + qk / 4 + qk / 8 + 12)
        case .q4_K: return (qk, 2 + 2 + qk / 2 + 12)
        case .q5_K: return (qk, 2 + 2 + qk / 2 + qk / 8 + 12)
        case .q6_K: return (qk, 2 + qk / 2 + qk / 4 + qk / 16)
        case .q8_K: return (qk, 4 + qk + qk / 8)
        case .iq2_xxs: return (qk, 2 + qk / 4)
        case .iq2_xs: return (qk, 2 + qk / 4 + qk / 32)
        case .iq3_xxs: return (qk, 2 + qk / 4 + qk / 8)
        case .iq1_s: return (qk, 2 + qk / 8 + qk / 16)
        case .iq4_nl: return (32, 2 + 16)
        case .iq3_s: return (qk, 2 + qk / 4 + qk / 8 + qk / 32 + 4)
        case .iq2_s: return (qk, 2 + qk / 4 + qk / 16)
        case .iq4_xs: return (qk, 2 + 2 + qk / 2 + qk / 64)
        case .i8: return (1, 1)
        case .i16: return (1, 2)
        case .i32: return (1, 4)
        case .i64, .f64: return (1, 8)
        case .iq1_m: return (qk, qk / 8 + qk / 16 + qk / 32)
        case .tq1_0: return (qk, 2 + 4 * 13)
        case .tq2_0: return (qk, 2 + 64)
        case .mxfp4: return (32, 1 + 16)
        case .nvfp4: return (64, 4 + 32)
        case .q1_0: return (128, 2 + 16)
        case .q2_0: return (64, 2 + 16)
        }
    }

    /// Elements per block: a row's length must be a multiple of it.
    public var blockSize: Int { layout.0 }
    /// Bytes one block occupies.
    public var bytesPerBlock: Int { layout.1 }

    /// The storage type this project computes with; nil for the other ggml types.
    public var quantType: QuantType? {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        default: return nil
        }
    }

    public init(_ id: QuantType.ID) {
        switch id {
        case .f32: self = .f32
        case .f16: self = .f16
        case .bf16: self = .bf16
        case .q8_0: self = .q8_0
        }
    }

    /// The types whose data this project reads, as a list for messages.
    public static var supportedNames: String {
        allCases.filter { $0.quantType != nil }.map(\.name).joined(separator: ", ")
    }
}

// MARK: - Errors and tensor infos

public struct GGUFError: LocalizedError, Equatable {
    public let file: String
    public let tensor: String?
    public let key: String?
    public let reason: String
    public init(file: String, tensor: String? = nil, key: String? = nil, reason: String) {
        self.file = file; self.tensor = tensor; self.key = key; self.reason = reason
    }
    public var errorDescription: String? {
        var s = file
        if let tensor { s += ": tensor '\(tensor)'" }
        if let key { s += ": key '\(key)'" }
        return s + ": " + reason
    }
}

public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let type: GGMLType
    /// GGUF (ggml `ne`) order: dims[0] is the row length, the fastest-varying index.
    public let dims: [Int]
    /// Offset of the data from the start of the data section, as stored.
    public let relativeOffset: Int
    /// Offset of the first byte from the start of the file.
    public let fileOffset: Int
    public let byteCount: Int
    public let elementCount: Int

    /// Row-major order (dims reversed), as numpy, PyTorch and safetensors show it.
    public var shape: [Int] { dims.reversed() }
    public var rowLength: Int { dims[0] }
    public var rowCount: Int { elementCount / dims[0] }
}

// MARK: - Reader

/// A memory-mapped GGUF file whose header, metadata and tensor table are fully validated on open: every
/// count and length is checked against the bytes the file holds before anything is allocated, and every
/// tensor's data range lies inside the file, aligned, without overlaps.
public final class GGUFFile: @unchecked Sendable {
    public static let magic: [UInt8] = Array("GGUF".utf8)
    public static let defaultAlignment = 32
    public static let alignmentKey = "general.alignment"
    /// Arrays nested deeper than this are refused (a crafted file could otherwise recurse without bound).
    public static let maxArrayDepth = 8
    /// At most this many metadata values (array elements included) are read: each takes ~24 bytes in memory
    /// for as little as 1 byte in the file, so without a cap a crafted file could make the metadata ~24 times
    /// its size. Real files hold a few hundred thousand (the vocabulary and merges).
    public static let maxMetadataValues = 1 << 24

    public let path: String
    public let file: MappedFile
    public let version: Int
    public let alignment: Int
    /// Offset of the data section from the start of the file.
    public let dataOffset: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [String: GGUFTensorInfo]
    /// Tensor names in file (tensor table) order.
    public let tensorNames: [String]

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        self.file = file
        var r = Reader(path: path, base: file.bytes, size: file.size)
        let size = file.size

        guard size >= 4 else { throw r.fail("truncated: \(size) bytes, too short for the GGUF magic") }
        let magic = (0..<4).map { file.bytes.load(fromByteOffset: $0, as: UInt8.self) }
        guard magic == Self.magic else {
            let hex = magic.map { String(format: "%02x", $0) }.joined(separator: " ")
            throw r.fail("not a GGUF file: the magic is \(hex), expected 47 47 55 46 (\"GGUF\")")
        }
        guard size >= 24 else {
            throw r.fail("truncated header: \(size) bytes, shorter than the 24 bytes of magic, version and counts")
        }
        r.pos = 4
        let v = try r.u32("version")
        switch v {
        case 2, 3: break
        case 1: throw r.fail("GGUF version 1 is not supported (only versions 2 and 3): re-convert the model with a current llama.cpp")
        default:
            if v & 0xFFFF == 0, (2...3).contains(v.byteSwapped) {
                throw r.fail("big-endian GGUF (version \(v.byteSwapped)) is not supported: only little-endian files are read")
            }
            throw r.fail("unsupported GGUF version \(v) (versions 2 and 3 are read)")
        }
        version = Int(v)
        let tensorCount = try r.u64("tensor count")
        let kvCount = try r.u64("metadata count")
        // Every tensor info takes at least 32 bytes (name length 8, n_dims 4, one dim 8, type 4, offset 8),
        // every key/value at least 13 (key length 8, type 4, a 1-byte value).
        let room = UInt64(size - r.pos)
        guard tensorCount <= room / 32 else {
            throw r.fail("tensor count \(tensorCount) is absurd: a file of \(size) bytes holds at most \(room / 32) tensor infos")
        }
        guard kvCount <= room / 13 else {
            throw r.fail("metadata count \(kvCount) is absurd: a file of \(size) bytes holds at most \(room / 13) key/value pairs")
        }

        var meta: [String: GGUFValue] = [:]
        var keys: [String] = []
        keys.reserveCapacity(Int(kvCount))
        for i in 0..<Int(kvCount) {
            let key = try r.string("the key of metadata entry \(i)")
            guard !key.isEmpty else { throw r.fail("metadata entry \(i) has an empty key") }
            r.key = key
            guard meta[key] == nil else { throw r.fail("duplicate metadata key") }
            let typeID = try r.u32("the value type")
            guard let type = GGUFValueType(rawValue: typeID) else { throw r.fail("unknown value type \(typeID)") }
            meta[key] = try r.value(type, depth: 0)
            keys.append(key)
            r.key = nil
        }

        var align = Self.defaultAlignment
        if let a = meta[Self.alignmentKey] {
            guard case .uint32(let n) = a else {
                throw GGUFError(file: path, key: Self.alignmentKey, reason: "must be a UINT32, found \(a.type.name)")
            }
            guard n > 0, n & (n - 1) == 0 else {
                throw GGUFError(file: path, key: Self.alignmentKey, reason: "alignment \(n) is not a power of two")
            }
            align = Int(n)
        }

        struct Raw { let name: String; let type: GGMLType; let dims: [Int]; let offset: UInt64; let bytes: Int; let elements: Int }
        var raws: [Raw] = []
        raws.reserveCapacity(Int(tensorCount))
        var seen = Set<String>()
        for i in 0..<Int(tensorCount) {
            let name = try r.string("the name of tensor \(i)")
            r.tensor = name
            guard seen.insert(name).inserted else { throw r.fail("duplicate tensor name") }
            let nDims = try r.u32("n_dims")
            guard (1...4).contains(nDims) else { throw r.fail("n_dims \(nDims) is outside 1...4") }
            var dims: [Int] = []
            for _ in 0..<Int(nDims) {
                let d = try r.u64("the dimensions")
                guard d > 0, d <= UInt64(Int.max) else { throw r.fail("dimension \(d) is invalid (dims so far \(dims))") }
                dims.append(Int(d))
            }
            let typeID = try r.u32("the ggml type")
            guard let type = GGMLType(rawValue: typeID) else {
                throw r.fail("unknown ggml type id \(typeID) (dims \(dims))")
            }
            guard dims[0] % type.blockSize == 0 else {
                throw r.fail("row length \(dims[0]) is not a multiple of the \(type.name) block size \(type.blockSize)")
            }
            // Checked: a crafted ne[0] of 2^62 must not wrap the byte count to a size that "fits".
            var elements = 1
            var (bytes, o0) = (dims[0] / type.blockSize).multipliedReportingOverflow(by: type.bytesPerBlock)
            guard !o0 else { throw r.fail("\(type.name) dims \(dims): the byte size overflows (more than \(Int.max) bytes)") }
            for (k, d) in dims.enumerated() {
                let (e, o1) = elements.multipliedReportingOverflow(by: d)
                var o2 = false
                if k > 0 { (bytes, o2) = bytes.multipliedReportingOverflow(by: d) }
                guard !o1, !o2 else { throw r.fail("\(type.name) dims \(dims): the element or byte count overflows (more than \(Int.max))") }
                elements = e
            }
            let offset = try r.u64("the data offset")
            raws.append(Raw(name: name, type: type, dims: dims, offset: offset, bytes: bytes, elements: elements))
            r.tensor = nil
        }

        // The data section starts at the next multiple of the alignment (a file without tensors may end here).
        let dataStart = (r.pos + align - 1) / align * align
        let dataSize = max(0, size - dataStart)
        var infos: [String: GGUFTensorInfo] = [:]
        for t in raws {
            func fail(_ reason: String) -> GGUFError { GGUFError(file: path, tensor: t.name, reason: reason) }
            guard t.offset % UInt64(align) == 0 else {
                throw fail("data offset \(t.offset) is not a multiple of the alignment \(align)")
            }
            guard t.offset <= UInt64(dataSize), t.bytes <= dataSize - Int(t.offset) else {
                throw fail("\(t.type.name) \(t.dims) data [\(t.offset), +\(t.bytes)) runs past the end of the data section (\(dataSize) bytes from offset \(dataStart) of a \(size)-byte file): file truncated?")
            }
            infos[t.name] = GGUFTensorInfo(name: t.name, type: t.type, dims: t.dims, relativeOffset: Int(t.offset),
                                           fileOffset: dataStart + Int(t.offset), byteCount: t.bytes, elementCount: t.elements)
        }
        let byOffset = infos.values.sorted { ($0.relativeOffset, $0.name) < ($1.relativeOffset, $1.name) }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) where a.relativeOffset + a.byteCount > b.relativeOffset {
            throw GGUFError(file: path, tensor: b.name,
                            reason: "data [\(b.relativeOffset), +\(b.byteCount)) overlaps tensor '\(a.name)' [\(a.relativeOffset), +\(a.byteCount))")
        }

        alignment = align
        dataOffset = dataStart
        metadata = meta
        metadataKeys = keys
        tensors = infos
        tensorNames = raws.map(\.name)
    }

    // MARK: Tensors

    public func info(_ name: String) throws -> GGUFTensorInfo {
        guard let t = tensors[name] else { throw GGUFError(file: path, tensor: name, reason: "tensor not found") }
        return t
    }

    /// The first byte of the tensor's data (inside the mapping; valid while this object lives).
    public func data(_ info: GGUFTensorInfo) -> UnsafeRawPointer { file.bytes + info.fileOffset }

    public func bytes(_ info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: data(info), count: info.byteCount)
    }

    /// The storage type of a tensor this project computes with; refuses the other ggml types.
    public func quantType(_ info: GGUFTensorInfo) throws -> QuantType {
        guard let q = info.type.quantType else {
            throw GGUFError(file: path, tensor: info.name,
                            reason: "type \(info.type.name) is not supported (supported: \(GGMLType.supportedNames))")
        }
        return q
    }

    /// The tensor converted to f32, in storage order (exact for F32/F16/BF16, dequantized for Q8_0).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        let q = try quantType(t)
        return [Float](unsafeUninitializedCapacity: t.elementCount) { buf, n in
            if let out = buf.baseAddress { q.toFloat(data(t), out, t.elementCount) }
            n = t.elementCount
        }
    }

    // MARK: Typed metadata

    private func typed<T>(_ key: String, _ what: String, _ extract: (GGUFValue) -> T?) throws -> T? {
        guard let v = metadata[key] else { return nil }
        guard let x = extract(v) else {
            let found = v.arrayElementType.map { "ARRAY of \($0.name)" } ?? "\(v.type.name) \(v)"
            throw GGUFError(file: path, key: key, reason: "expected \(what), found \(found)")
        }
        return x
    }

    private func required<T>(_ key: String, _ what: String, _ extract: (GGUFValue) -> T?) throws -> T {
        guard let x = try typed(key, what, extract) else {
            throw GGUFError(file: path, key: key, reason: "missing (expected \(what))")
        }
        return x
    }

    /// A non-negative integer of any integer type.
    public func uint(_ key: String) throws -> Int { try required(key, "a non-negative integer", Self.nonNegative) }
    public func uintIfPresent(_ key: String) throws -> Int? { try typed(key, "a non-negative integer", Self.nonNegative) }
    /// An integer of any integer type.
    public func int(_ key: String) throws -> Int { try required(key, "an integer", \.int) }
    public func intIfPresent(_ key: String) throws -> Int? { try typed(key, "an integer", \.int) }
    /// A float32 or float64.
    public func float(_ key: String) throws -> Float { try required(key, "a float", \.float) }
    public func floatIfPresent(_ key: String) throws -> Float? { try typed(key, "a float", \.float) }
    /// A float32 or float64 without rounding to Float.
    public func double(_ key: String) throws -> Double { try required(key, "a float", \.double) }
    public func doubleIfPresent(_ key: String) throws -> Double? { try typed(key, "a float", \.double) }
    public func bool(_ key: String) throws -> Bool { try required(key, "a bool", \.bool) }
    public func boolIfPresent(_ key: String) throws -> Bool? { try typed(key, "a bool", \.bool) }
    public func string(_ key: String) throws -> String { try required(key, "a string", \.string) }
    public func stringIfPresent(_ key: String) throws -> String? { try typed(key, "a string", \.string) }
    public func stringArray(_ key: String) throws -> [String] { try required(key, "an array of strings", \.stringArray) }
    public func stringArrayIfPresent(_ key: String) throws -> [String]? { try typed(key, "an array of strings", \.stringArray) }
    public func floatArray(_ key: String) throws -> [Float] { try required(key, "an array of floats", \.floatArray) }
    public func floatArrayIfPresent(_ key: String) throws -> [Float]? { try typed(key, "an array of floats", \.floatArray) }
    public func intArray(_ key: String) throws -> [Int] { try required(key, "an array of integers", \.intArray) }
    public func intArrayIfPresent(_ key: String) throws -> [Int]? { try typed(key, "an array of integers", \.intArray) }

    private static func nonNegative(_ v: GGUFValue) -> Int? { v.int.flatMap { $0 >= 0 ? $0 : nil } }
}

/// A bounds-checked little-endian cursor over the mapping; errors name the file and the key or tensor being read.
private struct Reader {
    let path: String
    let base: UnsafeRawPointer
    let size: Int
    var pos = 0
    var key: String?
    var tensor: String?
    /// Metadata values read so far (bounded by GGUFFile.maxMetadataValues).
    var values = 0

    func fail(_ reason: String) -> GGUFError { GGUFError(file: path, tensor: tensor, key: key, reason: reason) }

    mutating func need(_ n: Int, _ what: String) throws {
        guard n <= size - pos else {
            throw fail("truncated: \(what) needs \(n) bytes at offset \(pos) but the file has \(size) bytes")
        }
    }

    mutating func scalar<T: FixedWidthInteger>(_: T.Type, _ what: String) throws -> T {
        try need(MemoryLayout<T>.size, what)
        defer { pos += MemoryLayout<T>.size }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: pos, as: T.self))
    }

    mutating func u32(_ what: String) throws -> UInt32 { try scalar(UInt32.self, what) }
    mutating func u64(_ what: String) throws -> UInt64 { try scalar(UInt64.self, what) }

    mutating func string(_ what: String) throws -> String {
        let n = try u64("the length of \(what)")
        guard n <= UInt64(size - pos) else {
            throw fail("string length \(n) of \(what) runs past the end of the file (\(size - pos) bytes left at offset \(pos))")
        }
        let bytes = UnsafeRawBufferPointer(start: base + pos, count: Int(n))
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw fail("\(what) at offset \(pos) is not valid UTF-8")
        }
        pos += Int(n)
        return s
    }

    mutating func value(_ type: GGUFValueType, depth: Int) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try scalar(UInt8.self, "a UINT8 value"))
        case .int8: return .int8(try scalar(Int8.self, "an INT8 value"))
        case .uint16: return .uint16(try scalar(UInt16.self, "a UINT16 value"))
        case .int16: return .int16(try scalar(Int16.self, "an INT16 value"))
        case .uint32: return .uint32(try scalar(UInt32.self, "a UINT32 value"))
        case .int32: return .int32(try scalar(Int32.self, "an INT32 value"))
        case .uint64: return .uint64(try scalar(UInt64.self, "a UINT64 value"))
        case .int64: return .int64(try scalar(Int64.self, "an INT64 value"))
        case .float32: return .float32(Float(bitPattern: try scalar(UInt32.self, "a FLOAT32 value")))
        case .float64: return .float64(Double(bitPattern: try scalar(UInt64.self, "a FLOAT64 value")))
        case .bool:
            let b = try scalar(UInt8.self, "a BOOL value")
            guard b <= 1 else { throw fail("BOOL value \(b) at offset \(pos - 1) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string: return .string(try string("the string value"))
        case .array:
            guard depth < GGUFFile.maxArrayDepth else {
                throw fail("arrays nested deeper than \(GGUFFile.maxArrayDepth) levels")
            }
            let typeID = try u32("the array element type")
            guard let element = GGUFValueType(rawValue: typeID) else { throw fail("unknown array element type \(typeID)") }
            let count = try u64("the array length")
            let room = UInt64(size - pos)
            guard count <= room / UInt64(element.minimumEncodedSize) else {
                throw fail("array length \(count) of \(element.name) runs past the end of the file (\(room) bytes left at offset \(pos))")
            }
            guard count <= UInt64(GGUFFile.maxMetadataValues - values) else {
                throw fail("array length \(count): the metadata would hold more than \(GGUFFile.maxMetadataValues) values")
            }
            values += Int(count)
            var values: [GGUFValue] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { values.append(try value(element, depth: depth + 1)) }
            return .array(element, values)
        }
    }
}

// MARK: - Writer

/// Streams a GGUF version 3 file: the header, metadata and tensor table are fixed up front, then each
/// tensor's bytes are written in the declared order (a tensor may arrive in several pieces; the writer
/// inserts the alignment padding). Written atomically (temp file, fsync, rename) on `commit()`.
public final class GGUFWriter {
    public struct Spec: Sendable, Equatable {
        public let name: String
        public let type: GGMLType
        /// Row-major order (numpy / safetensors): the last entry is the row length.
        public let shape: [Int]
        public init(_ name: String, _ type: GGMLType, _ shape: [Int]) {
            self.name = name; self.type = type; self.shape = shape
        }
        public init(name: String, type: GGMLType, shape: [Int]) { self.init(name, type, shape) }
        /// GGUF order (ne): dims[0] is the row length.
        public var dims: [Int] { shape.reversed() }
        public var elementCount: Int { shape.reduce(1, *) }
        public var byteCount: Int { elementCount / type.blockSize * type.bytesPerBlock }
    }

    public let path: String
    public let alignment: Int
    private let specs: [Spec]
    private let out: AtomicFileWriter
    private var next = 0
    private var writtenInCurrent = 0
    private var committed = false

    /// - Parameters:
    ///   - metadata: key/value pairs in file order. `general.alignment` (UINT32) is written only if given
    ///     here; then it is the alignment used (`alignment` must be left at 32 or agree). A non-default
    ///     `alignment` without the key adds `general.alignment` at the end, since readers would otherwise
    ///     assume 32.
    public init(path: String, metadata: [(String, GGUFValue)], tensors: [Spec], alignment: Int = 32) throws {
        self.path = path
        func fail(_ reason: String, tensor: String? = nil, key: String? = nil) -> GGUFError {
            GGUFError(file: path, tensor: tensor, key: key, reason: reason)
        }
        var meta = metadata
        var align = alignment
        if let given = metadata.first(where: { $0.0 == GGUFFile.alignmentKey })?.1 {
            guard case .uint32(let n) = given else {
                throw fail("must be a UINT32, found \(given.type.name)", key: GGUFFile.alignmentKey)
            }
            guard alignment == GGUFFile.defaultAlignment || alignment == Int(n) else {
                throw fail("metadata alignment \(n) disagrees with alignment \(alignment)", key: GGUFFile.alignmentKey)
            }
            align = Int(n)
        } else if align != GGUFFile.defaultAlignment {
            guard align > 0, align <= Int(UInt32.max) else { throw fail("alignment \(align) is invalid") }
            meta.append((GGUFFile.alignmentKey, .uint32(UInt32(align))))
        }
        guard align > 0, align & (align - 1) == 0 else { throw fail("alignment \(align) is not a power of two") }
        self.alignment = align

        var keys = Set<String>()
        for (k, v) in meta {
            guard !k.isEmpty else { throw fail("empty metadata key") }
            guard keys.insert(k).inserted else { throw fail("duplicate metadata key", key: k) }
            if let problem = Self.check(v, depth: 0) { throw fail(problem, key: k) }
        }
        var names = Set<String>()
        for s in tensors {
            func bad(_ reason: String) -> GGUFError { fail(reason, tensor: s.name) }
            guard !s.name.isEmpty else { throw fail("empty tensor name") }
            guard names.insert(s.name).inserted else { throw bad("duplicate tensor name") }
            guard (1...4).contains(s.shape.count) else { throw bad("shape \(s.shape) must have 1 to 4 dimensions") }
            guard s.shape.allSatisfy({ $0 > 0 }) else { throw bad("shape \(s.shape) has a dimension that is not positive") }
            var e = 1
            for d in s.shape {
                let (p, o) = e.multipliedReportingOverflow(by: d)
                guard !o else { throw bad("shape \(s.shape) overflows") }
                e = p
            }
            let row = s.shape[s.shape.count - 1]
            guard row % s.type.blockSize == 0 else {
                throw bad("row length \(row) is not a multiple of the \(s.type.name) block size \(s.type.blockSize)")
            }
        }
        specs = tensors

        var h = ByteWriter()
        h.bytes += GGUFFile.magic
        h.u32(3)
        h.u64(UInt64(tensors.count))
        h.u64(UInt64(meta.count))
        for (k, v) in meta {
            h.string(k)
            h.u32(v.type.rawValue)
            h.value(v)
        }
        var offset = 0
        for s in tensors {
            h.string(s.name)
            h.u32(UInt32(s.shape.count))
            for d in s.dims { h.u64(UInt64(d)) }
            h.u32(s.type.rawValue)
            h.u64(UInt64(offset))
            offset += Self.padded(s.byteCount, align)
        }
        h.bytes += [UInt8](repeating: 0, count: Self.padded(h.bytes.count, align) - h.bytes.count)
        out = try AtomicFileWriter(path: path)
        try out.write(h.bytes)
    }

    static func padded(_ n: Int, _ align: Int) -> Int { (n + align - 1) / align * align }

    /// Why a value cannot be written (an array element of the wrong type, nesting too deep), or nil.
    static func check(_ v: GGUFValue, depth: Int) -> String? {
        guard case .array(let t, let values) = v else { return nil }
        guard depth < GGUFFile.maxArrayDepth else { return "arrays nested deeper than \(GGUFFile.maxArrayDepth) levels" }
        for (i, x) in values.enumerated() {
            guard x.type == t else { return "array of \(t.name) has element \(i) of type \(x.type.name)" }
            if let p = check(x, depth: depth + 1) { return p }
        }
        return nil
    }

    /// The tensor the next byte belongs to, if any.
    public var currentTensor: Spec? { next < specs.count ? specs[next] : nil }

    /// Appends bytes of the current tensor (a tensor may be written in several pieces).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var remaining = bytes
        while !remaining.isEmpty {
            guard next < specs.count else {
                throw GGUFError(file: path, reason: "more tensor data written than the \(specs.count) tensors declared hold")
            }
            let s = specs[next]
            let n = min(s.byteCount - writtenInCurrent, remaining.count)
            try out.write(UnsafeRawBufferPointer(rebasing: remaining[..<n]))
            writtenInCurrent += n
            remaining = UnsafeRawBufferPointer(rebasing: remaining[n...])
            if writtenInCurrent == s.byteCount {
                let pad = Self.padded(s.byteCount, alignment) - s.byteCount
                if pad > 0 { try out.write([UInt8](repeating: 0, count: pad)) }
                next += 1
                writtenInCurrent = 0
            }
        }
    }

    public func write<T>(_ values: [T]) throws { try values.withUnsafeBytes { try write($0) } }

    /// Writes f32 values converted to the current tensor's type (F32, F16, BF16 or Q8_0; for Q8_0 the count
    /// must be a multiple of 32 and the piece must start on a block boundary).
    public func writeFloats(_ values: UnsafeBufferPointer<Float>) throws {
        guard let s = currentTensor else {
            throw GGUFError(file: path, reason: "more tensor data written than the \(specs.count) tensors declared hold")
        }
        guard let q = s.type.quantType else {
            throw GGUFError(file: path, tensor: s.name,
                            reason: "writeFloats cannot produce \(s.type.name) (supported: \(GGMLType.supportedNames))")
        }
        guard values.count % q.blockSize == 0, writtenInCurrent % q.bytesPerBlock == 0 else {
            throw GGUFError(file: path, tensor: s.name,
                            reason: "\(values.count) values do not make whole \(s.type.name) blocks of \(q.blockSize)")
        }
        if values.isEmpty { return }
        try q.withStored(values) { try write($0) }
    }

    public func writeFloats(_ values: [Float]) throws { try values.withUnsafeBufferPointer { try writeFloats($0) } }

    /// Checks that every declared byte was written, then fsyncs and renames the file into place (after
    /// `verify` has read the complete file, when given).
    public func commit(verify: ((String) throws -> Void)? = nil) throws {
        guard !committed else { throw GGUFError(file: path, reason: "already committed") }
        guard next == specs.count else {
            let s = specs[next]
            throw GGUFError(file: path, tensor: s.name,
                            reason: "tensor data not fully written: \(writtenInCurrent) of \(s.byteCount) bytes (\(specs.count - next) tensors incomplete)")
        }
        try out.commit(verify: verify)
        committed = true
    }
}

/// Little-endian encoding into a byte array.
private struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += s.utf8 }
    mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): bytes.append(x)
        case .int8(let x): bytes.append(UInt8(bitPattern: x))
        case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { bytes += $0 }
        case .int16(let x): withUnsafeBytes(of: x.littleEndian) { bytes += $0 }
        case .uint32(let x): u32(x)
        case .int32(let x): u32(UInt32(bitPattern: x))
        case .uint64(let x): u64(x)
        case .int64(let x): u64(UInt64(bitPattern: x))
        case .float32(let x): u32(x.bitPattern)
        case .float64(let x): u64(x.bitPattern)
        case .bool(let x): bytes.append(x ? 1 : 0)
        case .string(let s): string(s)
        case .array(let t, let values):
            u32(t.rawValue)
            u64(UInt64(values.count))
            for x in values { value(x) }
        }
    }
}
