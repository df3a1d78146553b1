import Foundation
import Quant
import Formats

/// `llamaprobe shards export`: a whole shard directory as plain arrays, rows in input order, every stored hook
/// point (resid_post unless extracted with --hooks) in f32.
/// - `npy`: OUT/ is a directory of `HOOK.npy` per hook (`resid_post.npy`: f32 [rows, layers, d_model]),
///   `label.npy` (i64), `row.npy` (i64), `n_tokens.npy` (i32) and `metadata.json` (the shard metadata).
/// - `safetensors`: OUT is one file with the same tensors and the shard metadata as `__metadata__`.
public enum ShardExport {
    public enum Format: String, CaseIterable, Sendable { case npy, safetensors }
    public struct Result: Sendable { public var rows: Int; public var layers: Int; public var dModel: Int }

    public static func run(directory: String, format: Format, out: String) throws -> Result {
        let dir = try ShardDirectory(path: directory)
        let meta = dir.metadata
        let storage = meta.dtype.quantType
        let width = meta.layers.count * meta.dModel   // bounded by Manifest.validate
        // Pass 1: the rows of every shard (labels only), to place each row at its rank.
        var rows: [Int64] = []
        var perShard: [(path: String, count: Int)] = []
        for path in dir.shardPaths {
            let c = try ShardStream.read(path: path, hook: nil, labelsOnly: true) { _, _ in }
            rows += c.rows
            perShard.append((path, c.count))
        }
        let order = rows.indices.sorted { rows[$0] < rows[$1] }
        if let dup = zip(order, order.dropFirst()).first(where: { rows[$0.0] == rows[$0.1] }) {
            throw ShardError(file: directory, reason: "row \(rows[dup.0]) is in two shards")
        }
        var rank = [Int](repeating: 0, count: rows.count)
        for (r, i) in order.enumerated() { rank[i] = r }
        let n = rows.count
        let (total, overflow) = n.multipliedReportingOverflow(by: width)
        guard !overflow, !total.multipliedReportingOverflow(by: meta.hooks.count).overflow else {
            throw ShardError(file: directory, reason: "\(n) rows of \(meta.hooks.count) × \(width) values do not fit in memory")
        }
        // Pass 2: each row decoded straight to f32 at its rank, hook by hook.
        var values = [[Float]](repeating: [Float](repeating: 0, count: total), count: meta.hooks.count)
        var labels = [Int64](repeating: 0, count: n), sortedRows = [Int64](repeating: 0, count: n), nTokens = [Int32](repeating: 0, count: n)
        var base = 0
        for (path, count) in perShard {
            var c: ShardStream.Contents? = nil
            for (h, hook) in meta.hooks.enumerated() {
                c = try values[h].withUnsafeMutableBufferPointer { v in
                    try ShardStream.read(path: path, hook: hook) { i, bytes in
                        guard i < count else { throw ShardError(file: path, reason: "more rows than its first read") }
                        storage.toFloat(bytes, v.baseAddress! + rank[base + i] * width, width)
                    }
                }
            }
            guard let c else { continue }
            guard c.count == count else { throw ShardError(file: path, reason: "\(c.count) rows, \(count) on the first read") }
            for i in 0..<count {
                let r = rank[base + i]
                labels[r] = c.labels[i]; sortedRows[r] = c.rows[i]
                guard let t = Int32(exactly: c.nTokens[i]) else { throw ShardError(file: path, reason: "n_tokens \(c.nTokens[i]) is out of range") }
                nTokens[r] = t
            }
            base += count
        }
        let shape = [n, meta.layers.count, meta.dModel]
        switch format {
        case .safetensors:
            let w = try SafeTensorsWriter(path: out, tensors: meta.hooks.map { .init($0, .f32, shape) } + [.init("label", .i64, [n]),
                                                              .init("row", .i64, [n]), .init("n_tokens", .i32, [n])],
                                          metadata: meta.stringMap)
            for v in values { try w.write(v) }
            try w.write(labels); try w.write(sortedRows); try w.write(nTokens)
            try w.commit()
        case .npy:
            do { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
                throw ShardError(file: out, reason: "cannot create the output directory: \(error.localizedDescription)")
            }
            for (hook, v) in zip(meta.hooks, values) { try writeNpy(out + "/\(hook).npy", descr: "<f4", shape: shape, v) }
            try writeNpy(out + "/label.npy", descr: "<i8", shape: [n], labels)
            try writeNpy(out + "/row.npy", descr: "<i8", shape: [n], sortedRows)
            try writeNpy(out + "/n_tokens.npy", descr: "<i4", shape: [n], nTokens)
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let w = try AtomicFileWriter(path: out + "/metadata.json")
            try e.encode(meta).withUnsafeBytes { try w.write($0) }
            try w.commit()
        }
        return Result(rows: n, layers: meta.layers.count, dModel: meta.dModel)
    }

    /// A C-order .npy file (format 1.0), written atomically.
    static func writeNpy<T>(_ path: String, descr: String, shape: [Int], _ values: [T]) throws {
        let dims = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(dims), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        let w = try AtomicFileWriter(path: path)
        try w.write([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)])
        try w.write(header)
        try values.withUnsafeBytes { try w.write($0) }
        try w.commit()
    }
}
