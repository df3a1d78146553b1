import Foundation
import Quant
import Formats

public struct ImportError: LocalizedError, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var errorDescription: String? { "\(file): \(reason)" }
}

/// A C-order `.npy` array (format versions 1–3) of float32, float16, int64 or int32, memory-mapped.
public final class NpyArray: @unchecked Sendable {
    public enum DType: String, Sendable { case f4 = "<f4", f2 = "<f2", i8 = "<i8", i4 = "<i4" }
    public let path: String
    public let dtype: DType
    public let shape: [Int]
    let file: MappedFile
    let dataOffset: Int

    /// Elements (checked against the file's size when the array is opened).
    public let count: Int
    public var elementSize: Int { dtype == .f4 || dtype == .i4 ? 4 : dtype == .f2 ? 2 : 8 }

    public init(path: String) throws {
        self.path = path
        func fail(_ r: String) -> ImportError { ImportError(file: path, reason: r) }
        do { file = try MappedFile(path: path) } catch { throw fail("cannot read: \(error.localizedDescription)") }
        let b = file.bytes
        guard file.size >= 10, b.load(as: UInt8.self) == 0x93,
              String(decoding: UnsafeRawBufferPointer(start: b + 1, count: 5), as: UTF8.self) == "NUMPY" else {
            throw fail("not a .npy file (bad magic)")
        }
        let major = b.load(fromByteOffset: 6, as: UInt8.self)
        let headerLength: Int, start: Int
        switch major {
        case 1: headerLength = Int(b.loadUnaligned(fromByteOffset: 8, as: UInt16.self).littleEndian); start = 10
        case 2, 3:
            guard file.size >= 12 else { throw fail("truncated header") }
            headerLength = Int(b.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian); start = 12
        default: throw fail(".npy format version \(major) is not supported")
        }
        guard start + headerLength <= file.size else { throw fail("truncated header") }
        let header = String(decoding: UnsafeRawBufferPointer(start: b + start, count: headerLength), as: UTF8.self)
        func field(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descrField = field("descr"), let q1 = descrField.firstIndex(of: "'"),
              let q2 = descrField[descrField.index(after: q1)...].firstIndex(of: "'") else { throw fail("header lacks 'descr'") }
        let descr = String(descrField[descrField.index(after: q1)..<q2])
        guard let dt = DType(rawValue: descr.replacingOccurrences(of: "=", with: "<")) else {
            throw fail("dtype '\(descr)' is not supported (float32, float16, int64 or int32, little-endian)")
        }
        dtype = dt
        guard let fo = field("fortran_order") else { throw fail("header lacks 'fortran_order'") }
        guard fo.hasPrefix("False") else { throw fail("Fortran-order arrays are not supported; save with np.ascontiguousarray") }
        guard let sf = field("shape"), let open = sf.firstIndex(of: "("),
              let close = sf[open...].firstIndex(of: ")") else {
            throw fail("header lacks 'shape'")
        }
        let dims = sf[sf.index(after: open)..<close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let parsed = dims.compactMap { Int($0) }
        guard parsed.count == dims.count, parsed.allSatisfy({ $0 >= 0 }) else { throw fail("invalid shape \(sf)") }
        shape = parsed
        dataOffset = start + headerLength
        // Element count and byte size with checked arithmetic: the header's shape may lie.
        var elements = 1
        for d in parsed {
            let (e, o) = elements.multipliedReportingOverflow(by: d)
            guard !o else { throw fail("shape \(parsed) has more elements than memory can address (header 'shape' is corrupt)") }
            elements = e
        }
        let (need, o) = elements.multipliedReportingOverflow(by: dt == .f4 || dt == .i4 ? 4 : dt == .f2 ? 2 : 8)
        guard !o, file.size - dataOffset >= need else {
            throw fail("truncated: shape \(shape) needs \(o ? "more" : String(need)) bytes of data, the file has \(file.size - dataOffset)")
        }
        count = elements
    }

    var data: UnsafeRawPointer { file.bytes + dataOffset }

    /// Integer arrays as Int64.
    public func integers() throws -> [Int64] {
        switch dtype {
        case .i8: return (0..<count).map { data.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self).littleEndian }
        case .i4: return (0..<count).map { Int64(data.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self).littleEndian) }
        default: throw ImportError(file: path, reason: "labels must be int64 or int32, not \(dtype.rawValue)")
        }
    }
}

/// `llamaprobe shards import`: an [N, layers, d_model] array and N integer labels into a shard directory.
public struct ImportOptions: Sendable {
    public var activations: String
    public var key: String?
    public var labelsPath: String?
    public var labelKey: String?
    public var labelNames: [String]?
    public var out: String
    public var rowsPerShard = 256
    /// Shard storage type; nil = the source's float type.
    public var dtype: ActivationType?
    public init(activations: String, out: String) { self.activations = activations; self.out = out }
}

public enum ShardImport {
    public struct Result: Sendable { public var rows: Int; public var layers: Int; public var dModel: Int; public var shards: Int; public var dtype: ActivationType }

    public static func run(_ o: ImportOptions, log: (String) -> Void = { _ in }) throws -> Result {
        let src = o.activations
        func fail(_ r: String) -> ImportError { ImportError(file: src, reason: r) }
        guard (o.labelsPath == nil) != (o.labelKey == nil) else {
            throw ImportError(file: src, reason: "give exactly one of --labels FILE.npy and --label-key NAME")
        }
        // The activations: a base pointer, a shape and a float type.
        let keepAlive: AnyObject
        let base: UnsafeRawPointer
        let shape: [Int]
        let type: ActivationType
        var labels: [Int64] = []
        if src.hasSuffix(".npy") {
            guard o.labelKey == nil else { throw fail("--label-key reads labels from a .safetensors file; with .npy use --labels") }
            let a = try NpyArray(path: src)
            guard a.dtype == .f4 || a.dtype == .f2 else { throw fail("activations must be float32 or float16, not \(a.dtype.rawValue)") }
            keepAlive = a; base = a.data; shape = a.shape; type = a.dtype == .f4 ? .f32 : .f16
        } else if src.hasSuffix(".safetensors") {
            let f: SafeTensorsFile
            do { f = try SafeTensorsFile(path: src) } catch { throw fail(error.localizedDescription) }
            let name: String
            if let k = o.key { name = k } else {
                let threeD = f.names.filter { f.tensors[$0]!.shape.count == 3 && f.tensors[$0]!.dtype.quantType != nil }
                if f.tensors["resid_post"] != nil { name = "resid_post" }
                else if threeD.count == 1 { name = threeD[0] }
                else { throw fail("cannot tell which tensor holds the activations (\(threeD.count) float tensors of rank 3: \(threeD)); pass --key NAME") }
            }
            let t: TensorInfo
            do { t = try f.info(name) } catch { throw fail("no tensor '\(name)' (tensors: \(f.names.joined(separator: ", ")))") }
            guard let at = ActivationType(rawValue: t.dtype.rawValue) else { throw fail("tensor '\(name)' is \(t.dtype.rawValue); activations must be F32, F16 or BF16") }
            keepAlive = f; base = f.data(t); shape = t.shape; type = at
            if let lk = o.labelKey {
                do { labels = try f.integers(lk) } catch { throw fail("--label-key \(lk): \(error.localizedDescription)") }
            }
        } else {
            throw fail("activations must be a .safetensors or .npy file")
        }
        guard shape.count == 3, shape.allSatisfy({ $0 > 0 }) else { throw fail("activations have shape \(shape); expected [N, layers, d_model]") }
        let (n, layers, d) = (shape[0], shape[1], shape[2])
        if let lp = o.labelsPath {
            let a = try NpyArray(path: lp)
            guard a.shape.count == 1 else { throw ImportError(file: lp, reason: "labels have shape \(a.shape); expected [N]") }
            labels = try a.integers()
            guard labels.count == n else { throw ImportError(file: lp, reason: "\(labels.count) labels for \(n) rows of activations") }
        } else {
            guard labels.count == n else { throw fail("\(labels.count) labels for \(n) rows of activations") }
        }
        if let i = labels.firstIndex(where: { $0 < 0 }) { throw fail("row \(i): negative label \(labels[i])") }
        // Without --label-names the classes are 0...max: bounded before they are named.
        if o.labelNames == nil, let i = labels.firstIndex(where: { $0 >= Int64(ShardMetadata.maxLabels) }) {
            throw fail("row \(i): label \(labels[i]) is not a class id below \(ShardMetadata.maxLabels) (labels are 0…classes-1)")
        }
        let names = o.labelNames ?? (0...Int(labels.max() ?? 0)).map(String.init)
        if let i = labels.firstIndex(where: { $0 >= Int64(names.count) }) {
            throw fail("row \(i): label \(labels[i]) has no name (--label-names gives \(names.count))")
        }
        guard Set(names).count == names.count else { throw fail("--label-names has duplicates") }
        let dtype = o.dtype ?? type

        log("hashing \(src)")
        let hash = try sha256(file: src)
        let meta = ShardMetadata(model: "imported:" + hash, labels: names, template: "", suffix: "", systemPrompt: "",
                                 layers: Array(0..<layers), withEmbeddings: false, dtype: dtype, dModel: d)
        let config = ["source": (src as NSString).lastPathComponent, "source_sha256": hash, "key": o.key ?? "",
                      "labels": o.labelsPath.map { ($0 as NSString).lastPathComponent } ?? ("key:" + (o.labelKey ?? "")),
                      "rows_per_shard": String(o.rowsPerShard), "dtype": dtype.rawValue]
        let writer = try ShardWriter(directory: o.out, worker: 0, workers: 1, metadata: meta, rowsPerShard: o.rowsPerShard, config: config)
        let resumeAfter = writer.lastCompletedRow ?? -1
        if resumeAfter >= 0 { log("resuming after row \(resumeAfter)") }
        let rowElements = layers * d
        var row = [Float](repeating: 0, count: rowElements)
        for i in (resumeAfter + 1)..<n {
            try row.withUnsafeMutableBufferPointer { r in
                type.convert(base + i * rowElements * type.size, r.baseAddress!, rowElements)
                if let bad = r.firstIndex(where: { !$0.isFinite }) {
                    throw fail("row \(i): NaN or infinite activation at layer \(bad / d), element \(bad % d)")
                }
                try writer.append(row: i, label: Int(labels[i]), nTokens: 0, activations: UnsafePointer(r.baseAddress!))
            }
        }
        try writer.finish()
        withExtendedLifetime(keepAlive) {}
        return Result(rows: n, layers: layers, dModel: d, shards: writer.manifest.shards.count, dtype: dtype)
    }

    static func sha256(file path: String) throws -> String {
        do { return try SHA256.file(path).hex } catch let e as FileError { throw ImportError(file: path, reason: "cannot read: \(e.reason)") }
    }
}
