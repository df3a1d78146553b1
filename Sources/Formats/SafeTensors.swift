import Foundation
import Quant

/// Element types of the safetensors format.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"
    case u16 = "U16", u32 = "U32", u64 = "U64"

    public var elementSize: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// The weight storage type, for the float types this project computes with.
    public var quantType: QuantType? {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        default: return nil
        }
    }

    /// The safetensors dtype storing a float type; nil for block-quantized types.
    public init?(_ q: QuantType.ID) {
        switch q {
        case .f32: self = .f32
        case .f16: self = .f16
        case .bf16: self = .bf16
        case .q8_0: return nil
        }
    }
}

public struct SafeTensorsError: LocalizedError, Equatable {
    public let file: String
    public let tensor: String?
    public let reason: String
    public init(file: String, tensor: String? = nil, reason: String) {
        self.file = file; self.tensor = tensor; self.reason = reason
    }
    public var errorDescription: String? {
        if let tensor { return "\(file): tensor '\(tensor)': \(reason)" }
        return "\(file): \(reason)"
    }
}

public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// Offset of the first byte from the start of the file.
    public let fileOffset: Int
    public let byteCount: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

/// The JSON header of a safetensors file, validated: the one parser for mapped files (SafeTensorsFile) and
/// streamed ones (shards). Every entry has a known dtype, non-negative dimensions whose byte size does not
/// overflow and equals its `data_offsets` span; entries do not overlap and, when the data section's size is
/// known, lie inside it. Errors name the file and the tensor.
public struct SafeTensorsHeader: Sendable {
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        /// Byte range in the data section (after the 8-byte length and the header).
        public let begin: Int
        public let end: Int
    }
    /// `__metadata__` (string values only).
    public let metadata: [String: String]
    /// Tensors by data offset.
    public let entries: [Entry]

    /// `dataSize`: the bytes after the header, when known (nil for a stream; the reader then checks as it goes).
    public init(json headerData: Data, dataSize: Int?, file path: String) throws {
        func fail(_ reason: String, _ tensor: String? = nil) -> SafeTensorsError {
            SafeTensorsError(file: path, tensor: tensor, reason: reason)
        }
        guard headerData.first == UInt8(ascii: "{") else { throw fail("header is not a JSON object") }
        let parsed: Any
        do { parsed = try JSONSerialization.jsonObject(with: headerData) } catch {
            throw fail("header is not valid JSON: \(error.localizedDescription)")
        }
        guard let header = parsed as? [String: Any] else { throw fail("header is not a JSON object") }
        var meta: [String: String] = [:]
        var entries: [Entry] = []
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw fail("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw fail("__metadata__ value for '\(k)' is not a string") }
                    meta[k] = s
                }
                continue
            }
            guard let entry = value as? [String: Any] else { throw fail("entry is not an object", name) }
            guard let dtypeName = entry["dtype"] as? String else { throw fail("missing dtype", name) }
            guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
                throw fail("unknown dtype '\(dtypeName)'", name)
            }
            guard let shapeAny = entry["shape"] as? [Any] else { throw fail("missing shape", name) }
            var shape: [Int] = []
            for d in shapeAny {
                guard let n = (d as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }), n >= 0 else {
                    throw fail("shape \(shapeAny) has an invalid dimension", name)
                }
                shape.append(n)
            }
            guard let offs = entry["data_offsets"] as? [Any], offs.count == 2,
                  let begin = (offs[0] as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }),
                  let end = (offs[1] as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }) else {
                throw fail("missing or invalid data_offsets", name)
            }
            guard begin >= 0, begin <= end else { throw fail("data_offsets [\(begin), \(end)] are reversed", name) }
            if let dataSize, end > dataSize {
                throw fail("data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes): file truncated?", name)
            }
            var elements = 1
            for d in shape {
                let (p, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow else { throw fail("shape \(shape) overflows", name) }
                elements = p
            }
            let (bytes, overflow) = elements.multipliedReportingOverflow(by: dtype.elementSize)
            guard !overflow else {
                throw fail("\(dtypeName) \(shape) needs more than \(Int.max) bytes (the size overflows)", name)
            }
            guard bytes == end - begin else {
                throw fail("\(dtypeName) \(shape) needs \(bytes) bytes but data_offsets span \(end - begin)", name)
            }
            entries.append(Entry(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }
        entries.sort { ($0.begin, $0.name) < ($1.begin, $1.name) }
        for (a, b) in zip(entries, entries.dropFirst()) where b.end > b.begin && a.end > b.begin {
            throw fail("data overlaps tensor '\(a.name)'", b.name)
        }
        metadata = meta
        self.entries = entries
    }
}

/// A memory-mapped safetensors file with a validated header.
public final class SafeTensorsFile: @unchecked Sendable {
    /// Headers above this are refused: real checkpoints have headers of a few hundred KB.
    public static let maxHeaderBytes = 100 << 20

    public let path: String
    /// The mapped file (nil for a file parsed from memory).
    public let file: MappedFile?
    private let owner: AnyObject
    private let base: UnsafeRawPointer
    public let size: Int
    public let metadata: [String: String]
    public let tensors: [String: TensorInfo]
    /// Tensor names in file order (by data offset).
    public let names: [String]

    public convenience init(path: String) throws {
        let file = try MappedFile(path: path)
        try self.init(path: path, file: file, owner: file, base: file.bytes, size: file.size)
    }

    /// Parses a safetensors file held in memory (e.g. decompressed); `name` is used in errors.
    public convenience init(bytes: [UInt8], name: String) throws {
        let owned = OwnedBytes(bytes)
        try self.init(path: name, file: nil, owner: owned, base: UnsafeRawPointer(owned.pointer), size: bytes.count)
    }

    private init(path: String, file: MappedFile?, owner: AnyObject, base: UnsafeRawPointer, size: Int) throws {
        self.path = path
        self.file = file
        self.owner = owner
        self.base = base
        self.size = size
        func fail(_ reason: String, _ tensor: String? = nil) -> SafeTensorsError {
            SafeTensorsError(file: path, tensor: tensor, reason: reason)
        }
        guard size >= 8 else { throw fail("truncated: \(size) bytes, shorter than the 8-byte header length") }
        let headerLength = base.loadUnaligned(as: UInt64.self).littleEndian
        guard headerLength <= UInt64(Self.maxHeaderBytes) else {
            throw fail("header length \(headerLength) bytes is absurd (limit \(Self.maxHeaderBytes)); not a safetensors file or corrupt")
        }
        guard Int(headerLength) <= size - 8 else {
            throw fail("truncated: header length \(headerLength) exceeds the \(size - 8) bytes after the length field")
        }
        let dataStart = 8 + Int(headerLength)
        let header = try SafeTensorsHeader(json: Data(bytes: base + 8, count: Int(headerLength)), dataSize: size - dataStart, file: path)
        var infos: [String: TensorInfo] = [:]
        for e in header.entries {
            infos[e.name] = TensorInfo(name: e.name, dtype: e.dtype, shape: e.shape, fileOffset: dataStart + e.begin, byteCount: e.end - e.begin)
        }
        metadata = header.metadata
        tensors = infos
        names = header.entries.map(\.name)
    }

    public func info(_ name: String) throws -> TensorInfo {
        guard let t = tensors[name] else { throw SafeTensorsError(file: path, tensor: name, reason: "tensor not found") }
        return t
    }

    public func data(_ info: TensorInfo) -> UnsafeRawPointer { base + info.fileOffset }

    /// Drops a tensor's mapped pages from the resident set (no-op for in-memory files).
    public func release(_ info: TensorInfo) { file?.release(offset: info.fileOffset, count: info.byteCount) }

    /// The tensor converted to f32 (exact for F32/F16/BF16).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        guard let q = t.dtype.quantType else {
            throw SafeTensorsError(file: path, tensor: name, reason: "dtype \(t.dtype.rawValue) is not a float type")
        }
        return [Float](unsafeUninitializedCapacity: t.elementCount) { buf, n in
            if let out = buf.baseAddress { q.toFloat(data(t), out, t.elementCount) }
            n = t.elementCount
        }
    }

    /// The tensor as Int64 values (I64/I32 tensors).
    public func integers(_ name: String) throws -> [Int64] {
        let t = try info(name)
        let p = data(t)
        switch t.dtype {
        case .i64: return (0..<t.elementCount).map { p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self) }
        case .i32: return (0..<t.elementCount).map { Int64(p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        default: throw SafeTensorsError(file: path, tensor: name, reason: "dtype \(t.dtype.rawValue) is not an integer type")
        }
    }
}

/// Streams a safetensors file: the header (all names, dtypes and shapes) is fixed up front, then each
/// tensor's bytes are written in the declared order. Written atomically (temp file, fsync, rename).
public final class SafeTensorsWriter {
    public struct Spec: Sendable {
        public let name: String
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        public init(_ name: String, _ dtype: SafeTensorsDType, _ shape: [Int]) {
            self.name = name; self.dtype = dtype; self.shape = shape
        }
        public var byteCount: Int { shape.reduce(1, *) * dtype.elementSize }
    }

    public let path: String
    private let specs: [Spec]
    private let out: AtomicFileWriter
    private var next = 0
    private var writtenInCurrent = 0

    public init(path: String, tensors: [Spec], metadata: [String: String] = [:]) throws {
        self.path = path
        specs = tensors
        var seen = Set<String>()
        for s in tensors where !seen.insert(s.name).inserted {
            throw SafeTensorsError(file: path, tensor: s.name, reason: "duplicate tensor name")
        }
        out = try AtomicFileWriter(path: path)
        var header = Self.header(tensors, metadata: metadata)
        let padded = (8 + header.utf8.count + 7) / 8 * 8 - 8   // data starts 8-byte aligned
        header += String(repeating: " ", count: padded - header.utf8.count)
        var length = UInt64(header.utf8.count).littleEndian
        try withUnsafeBytes(of: &length) { try out.write($0) }
        try out.write(header)
    }

    static func header(_ specs: [Spec], metadata: [String: String]) -> String {
        var parts: [String] = []
        if !metadata.isEmpty {
            let m = metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }
            parts.append("\"__metadata__\":{\(m.joined(separator: ","))}")
        }
        var offset = 0
        for s in specs {
            let end = offset + s.byteCount
            let shape = s.shape.map(String.init).joined(separator: ",")
            parts.append("\(jsonString(s.name)):{\"dtype\":\"\(s.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// Appends bytes of the current tensor (a tensor may be written in several pieces).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var remaining = bytes
        while !remaining.isEmpty {
            advance()
            guard next < specs.count else {
                throw SafeTensorsError(file: path, reason: "more data written than the header declares")
            }
            let want = specs[next].byteCount - writtenInCurrent
            let n = min(want, remaining.count)
            try out.write(UnsafeRawBufferPointer(rebasing: remaining[..<n]))
            writtenInCurrent += n
            remaining = UnsafeRawBufferPointer(rebasing: remaining[n...])
            advance()
        }
        advance()
    }

    private func advance() {
        while next < specs.count && writtenInCurrent == specs[next].byteCount {
            next += 1
            writtenInCurrent = 0
        }
    }

    public func write<T>(_ values: [T]) throws { try values.withUnsafeBytes { try write($0) } }

    /// Writes f32 values converted to the current tensor's float dtype.
    public func writeFloats(_ values: UnsafeBufferPointer<Float>) throws {
        advance()
        guard next < specs.count, let q = specs[next].dtype.quantType else {
            throw SafeTensorsError(file: path, tensor: next < specs.count ? specs[next].name : nil,
                                   reason: "writeFloats on a tensor that is not F32/F16/BF16")
        }
        try q.withStored(values) { try write($0) }
    }

    public func commit() throws {
        advance()
        guard next == specs.count else {
            throw SafeTensorsError(file: path, tensor: specs[next].name, reason: "tensor data not fully written")
        }
        try out.commit()
    }
}

/// An owned copy of bytes with a stable address.
public final class OwnedBytes: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int
    public init(_ bytes: [UInt8]) {
        count = bytes.count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(1, count), alignment: 64)
        bytes.withUnsafeBytes { if count > 0 { pointer.copyMemory(from: $0.baseAddress!, byteCount: count) } }
    }
    deinit { pointer.deallocate() }
}

public enum SafeTensors {
    /// A whole safetensors file in memory: header (8-byte aligned data) then each tensor's bytes in order.
    public static func encode(_ tensors: [(SafeTensorsWriter.Spec, UnsafeRawBufferPointer)], metadata: [String: String]) -> [UInt8] {
        var header = SafeTensorsWriter.header(tensors.map(\.0), metadata: metadata)
        let padded = (8 + header.utf8.count + 7) / 8 * 8 - 8
        header += String(repeating: " ", count: padded - header.utf8.count)
        var out = [UInt8]()
        out.reserveCapacity(8 + header.utf8.count + tensors.reduce(0) { $0 + $1.1.count })
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out += $0 }
        out += Array(header.utf8)
        for (spec, data) in tensors {
            precondition(data.count == spec.byteCount, "tensor \(spec.name): \(data.count) bytes for \(spec.byteCount)")
            out += data
        }
        return out
    }
}

/// A JSON string literal with the escapes JSON requires.
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
