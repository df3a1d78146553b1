import Foundation
import Quant
import Formats

public struct ShardError: LocalizedError, Equatable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var errorDescription: String? { "\(file): \(reason)" }
}

/// What a shard directory holds, stored in every shard's safetensors `__metadata__` and in the manifests.
public struct ShardMetadata: Codable, Equatable, Sendable {
    public var format = "llamaprobe-shard"
    public var version = 1
    /// Model identity: a hash of its configuration and weights' shapes, or "imported:<sha256>" for imports.
    public var model: String
    /// Label names in id order.
    public var labels: [String]
    public var template: String
    public var suffix: String
    public var systemPrompt: String
    /// Layer indices stored, in order: with embeddings, HF `hidden_states` indexing (0 = embedding output,
    /// L + 1 = resid_post of block L); without, 0..<L = resid_post of block L.
    public var layers: [Int]
    public var withEmbeddings: Bool
    /// Storage type of resid_post: "F32", "F16" or "BF16".
    public var dtype: String
    public var dModel: Int

    enum CodingKeys: String, CodingKey {
        case format, version, model, labels, template, suffix, layers, dtype
        case systemPrompt = "system_prompt", withEmbeddings = "with_embeddings", dModel = "d_model"
    }

    public init(model: String, labels: [String], template: String, suffix: String, systemPrompt: String,
                layers: [Int], withEmbeddings: Bool, dtype: String, dModel: Int) {
        self.model = model; self.labels = labels; self.template = template; self.suffix = suffix
        self.systemPrompt = systemPrompt; self.layers = layers; self.withEmbeddings = withEmbeddings
        self.dtype = dtype; self.dModel = dModel
    }

    var storage: SafeTensorsDType? { SafeTensorsDType(rawValue: dtype).flatMap { $0.quantType == nil ? nil : $0 } }

    /// As safetensors `__metadata__` (string values; arrays JSON-encoded).
    var stringMap: [String: String] {
        let json = { (v: [String]) in "[" + v.map(jsonString).joined(separator: ",") + "]" }
        return ["format": format, "version": String(version), "model": model, "labels": json(labels),
                "template": template, "suffix": suffix, "system_prompt": systemPrompt,
                "layers": "[" + layers.map(String.init).joined(separator: ",") + "]",
                "with_embeddings": withEmbeddings ? "true" : "false", "dtype": dtype, "d_model": String(dModel)]
    }

    init(stringMap m: [String: String], file: String) throws {
        func need(_ k: String) throws -> String {
            guard let v = m[k] else { throw ShardError(file: file, reason: "shard metadata lacks '\(k)'") }
            return v
        }
        func array<T: Decodable>(_ k: String, _ t: T.Type) throws -> T {
            guard let v = try? JSONDecoder().decode(T.self, from: Data(try need(k).utf8)) else {
                throw ShardError(file: file, reason: "shard metadata '\(k)' is not a JSON array")
            }
            return v
        }
        guard try need("format") == "llamaprobe-shard" else {
            throw ShardError(file: file, reason: "not a llamaprobe shard (format '\(m["format"] ?? "")')")
        }
        guard let version = Int(try need("version")), version == 1 else {
            throw ShardError(file: file, reason: "shard format version \(m["version"] ?? "?") is not supported (this build reads version 1)")
        }
        guard let d = Int(try need("d_model")) else { throw ShardError(file: file, reason: "shard metadata 'd_model' is not a number") }
        self.init(model: try need("model"), labels: try array("labels", [String].self), template: try need("template"),
                  suffix: try need("suffix"), systemPrompt: try need("system_prompt"), layers: try array("layers", [Int].self),
                  withEmbeddings: try need("with_embeddings") == "true", dtype: try need("dtype"), dModel: d)
        self.version = version
    }
}

/// One decoded shard: resid_post [count, layers, dModel] in f32 (converted from the stored type), labels,
/// the index of each row in the input file, and each row's token count.
public struct ShardBatch: Sendable {
    public var metadata: ShardMetadata
    public var residPost: [Float]
    public var labels: [Int64]
    public var rows: [Int64]
    public var nTokens: [Int32]
    public var count: Int { labels.count }
    public var layerCount: Int { metadata.layers.count }

    public init(metadata: ShardMetadata, residPost: [Float], labels: [Int64], rows: [Int64], nTokens: [Int32]) {
        self.metadata = metadata; self.residPost = residPost; self.labels = labels; self.rows = rows; self.nTokens = nTokens
    }
}

/// The shard file format (docs/shards.md): one zstd frame (content size and checksum recorded) whose content
/// is a safetensors file with `resid_post` [n, layers, d_model], `label` I64 [n], `row` I64 [n],
/// `n_tokens` I32 [n] and the ShardMetadata as `__metadata__`.
public enum Shard {
    public static let compressionLevel: Int32 = 3

    public static func fileName(worker: Int, index: Int) -> String {
        "shard-\(String(worker).leftPadded(5))-\(String(index).leftPadded(5)).safetensors.zst"
    }

    /// The compressed bytes of a shard whose resid_post is already in the storage type.
    public static func encode(metadata: ShardMetadata, residPost: UnsafeRawBufferPointer, labels: [Int64], rows: [Int64],
                              nTokens: [Int32]) throws -> [UInt8] {
        guard let dt = metadata.storage else { throw ShardError(file: "<shard>", reason: "unsupported dtype \(metadata.dtype)") }
        let n = labels.count
        let st = labels.withUnsafeBytes { l in rows.withUnsafeBytes { r in nTokens.withUnsafeBytes { t in
            SafeTensors.encode([
                // the small tensors first: a reader that needs only labels and rows stops before the activations
                (.init("label", .i64, [n]), l), (.init("row", .i64, [n]), r), (.init("n_tokens", .i32, [n]), t),
                (.init("resid_post", dt, [n, metadata.layers.count, metadata.dModel]), residPost),
            ], metadata: metadata.stringMap)
        } } }
        return try Zstd.compress(st, level: compressionLevel)
    }

    public static func read(path: String) throws -> ShardBatch {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ShardError(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        return try decode(Array(data), name: path)
    }

    public static func decode(_ compressed: [UInt8], name: String) throws -> ShardBatch {
        let raw: [UInt8]
        do { raw = try Zstd.decompress(compressed) } catch {
            throw ShardError(file: name, reason: "corrupt or truncated shard: \(error.localizedDescription)")
        }
        let f: SafeTensorsFile
        do { f = try SafeTensorsFile(bytes: raw, name: name) } catch {
            throw ShardError(file: name, reason: "corrupt shard content: \(error.localizedDescription)")
        }
        let meta = try ShardMetadata(stringMap: f.metadata, file: name)
        do {
            let resid = try f.info("resid_post")
            let labels = try f.integers("label"), rows = try f.integers("row")
            let nTokens = try f.integers("n_tokens").map { Int32(truncatingIfNeeded: $0) }
            let n = labels.count
            guard resid.shape == [n, meta.layers.count, meta.dModel], rows.count == n, nTokens.count == n else {
                throw ShardError(file: name, reason: "inconsistent shapes: resid_post \(resid.shape), \(n) labels, \(rows.count) rows")
            }
            guard resid.dtype.rawValue == meta.dtype else {
                throw ShardError(file: name, reason: "resid_post is \(resid.dtype.rawValue) but the metadata says \(meta.dtype)")
            }
            if let bad = labels.first(where: { $0 < 0 || $0 >= Int64(meta.labels.count) }) {
                throw ShardError(file: name, reason: "label id \(bad) is outside the \(meta.labels.count) labels")
            }
            return ShardBatch(metadata: meta, residPost: try f.floats("resid_post"), labels: labels, rows: rows, nTokens: nTokens)
        } catch let e as ShardError { throw e } catch {
            throw ShardError(file: name, reason: error.localizedDescription)
        }
    }
}

/// One completed shard in a manifest.
public struct ShardRecord: Codable, Equatable, Sendable {
    public var file: String
    public var index: Int
    /// Input-row indices of the first and last row in the shard.
    public var firstRow: Int
    public var lastRow: Int
    public var count: Int
    public var bytes: Int
    public var sha256: String
    /// Rows in [firstRow, lastRow] of this worker that were skipped (`--on-error skip`), with the reason.
    public var skipped: [SkippedRow]
    /// Rows whose prompt was truncated to --max-tokens.
    public var truncated: [Int]

    enum CodingKeys: String, CodingKey {
        case file, index, count, bytes, sha256, skipped, truncated
        case firstRow = "first_row", lastRow = "last_row"
    }
}

public struct SkippedRow: Codable, Equatable, Sendable {
    public var row: Int
    public var reason: String
}

/// `manifest-WWWWW.json`: one worker's configuration and its completed shards.
public struct Manifest: Codable, Equatable, Sendable {
    public var format = "llamaprobe-manifest"
    public var version = 1
    public var worker: Int
    public var workers: Int
    /// The full extraction configuration (everything that determines the shards' content).
    public var config: [String: String]
    public var metadata: ShardMetadata
    public var shards: [ShardRecord]
    /// Rows skipped after the last shard (when no row followed them into a shard).
    public var skippedAfterLastShard: [SkippedRow] = []
    /// Set when the worker has processed all its rows.
    public var complete: Bool

    enum CodingKeys: String, CodingKey {
        case format, version, worker, workers, config, metadata, shards, complete
        case skippedAfterLastShard = "skipped_after_last_shard"
    }

    public init(worker: Int, workers: Int, config: [String: String], metadata: ShardMetadata, shards: [ShardRecord], complete: Bool) {
        self.worker = worker; self.workers = workers; self.config = config; self.metadata = metadata
        self.shards = shards; self.complete = complete
    }

    /// Every skipped row with its reason.
    public var skipped: [SkippedRow] { shards.flatMap(\.skipped) + skippedAfterLastShard }

    public static func fileName(worker: Int) -> String { "manifest-\(String(worker).leftPadded(5)).json" }

    public static func read(path: String) throws -> Manifest {
        do {
            return try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ShardError(file: path, reason: "not a valid manifest: \(error.localizedDescription)")
        }
    }

    /// Deterministic JSON (sorted keys), written atomically (temp file, fsync, rename).
    public func write(to path: String) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let w = try AtomicFileWriter(path: path)
        try e.encode(self).withUnsafeBytes { try w.write($0) }
        try w.write("\n")
        try w.commit()
    }
}

/// Writes one worker's shards and manifest: rows are appended one by one, a shard is compressed and written
/// every `rowsPerShard` rows on a background thread (so compression and I/O overlap the caller's work),
/// and the manifest is rewritten only after each shard file is safely in place. Reopening a directory with
/// the same configuration resumes after the last completed shard; a different configuration is refused.
public final class ShardWriter {
    public let directory: String
    public let worker: Int
    public let rowsPerShard: Int
    public private(set) var manifest: Manifest
    private let storage: SafeTensorsDType
    private let rowElements: Int
    // The shard being filled.
    private var resid: [UInt8] = []
    private var labels: [Int64] = [], rows: [Int64] = [], nTokens: [Int32] = []
    private var skipped: [SkippedRow] = [], truncated: [Int] = []
    private var nextIndex = 0
    // Background writing: one shard in flight at a time beyond the one being filled.
    private let queue = DispatchQueue(label: "llamaprobe.shard-writer")
    private let slots = DispatchSemaphore(value: 2)
    private var backgroundError: Error?
    private let lock = NSLock()
    public private(set) var bytesWritten = 0
    public private(set) var rawBytes = 0

    public var manifestPath: String { directory + "/" + Manifest.fileName(worker: worker) }

    /// The input row of the last row in a completed shard (resume after it), nil if none.
    public var lastCompletedRow: Int? { manifest.shards.last?.lastRow }
    public var completedRows: Int { manifest.shards.reduce(0) { $0 + $1.count } }

    public init(directory: String, worker: Int, workers: Int, metadata: ShardMetadata, rowsPerShard: Int,
                config: [String: String]) throws {
        guard let st = metadata.storage else {
            throw ShardError(file: directory, reason: "unsupported shard dtype \(metadata.dtype) (F32, F16 or BF16)")
        }
        guard rowsPerShard > 0 else { throw ShardError(file: directory, reason: "rows per shard must be positive") }
        self.directory = directory
        self.worker = worker
        self.rowsPerShard = rowsPerShard
        storage = st
        rowElements = metadata.layers.count * metadata.dModel
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw ShardError(file: directory, reason: "cannot create the output directory: \(error.localizedDescription)")
        }
        let fresh = Manifest(worker: worker, workers: workers, config: config, metadata: metadata, shards: [], complete: false)
        let path = directory + "/" + Manifest.fileName(worker: worker)
        if FileManager.default.fileExists(atPath: path) {
            let old = try Manifest.read(path: path)
            if let diff = Self.difference(old, fresh) {
                throw ShardError(file: path, reason: "this directory was written with a different configuration (\(diff)); use a new --out directory or the original settings")
            }
            manifest = old
            manifest.complete = false
        } else {
            // Another worker's manifest must agree too.
            for other in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            where other.hasPrefix("manifest-") && other.hasSuffix(".json") {
                let m = try Manifest.read(path: directory + "/" + other)
                var mine = fresh
                mine.worker = m.worker
                if let diff = Self.difference(m, mine) {
                    throw ShardError(file: directory + "/" + other, reason: "another worker wrote this directory with a different configuration (\(diff))")
                }
            }
            manifest = fresh
        }
        nextIndex = manifest.shards.count
        manifest.skippedAfterLastShard = []
        removeStaleFiles()
        resid.reserveCapacity(rowsPerShard * rowElements * st.elementSize)
    }

    /// What differs between two manifests' configurations, or nil.
    static func difference(_ a: Manifest, _ b: Manifest) -> String? {
        if a.workers != b.workers { return "workers: \(a.workers) vs \(b.workers)" }
        for k in Set(a.config.keys).union(b.config.keys).sorted() where a.config[k] != b.config[k] {
            return "\(k): '\(a.config[k] ?? "unset")' before, '\(b.config[k] ?? "unset")' now"
        }
        if a.metadata != b.metadata { return "model or shard layout differs" }
        return nil
    }

    /// Shard files of this worker not in the manifest (a crash between rename and manifest update, or
    /// temporary files) are removed: they will be written again.
    private func removeStaleFiles() {
        let mine = "shard-\(String(worker).leftPadded(5))-"
        let known = Set(manifest.shards.map(\.file))
        for f in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let stale = (f.hasPrefix(mine) && !known.contains(f))
                || (f.hasPrefix(".") && f.contains(".tmp-") && (f.contains(mine) || f.contains(Manifest.fileName(worker: worker))))
            if stale { try? FileManager.default.removeItem(atPath: directory + "/" + f) }
        }
    }

    public func append(row: Int, label: Int, nTokens n: Int, residPost: UnsafePointer<Float>, truncated wasTruncated: Bool = false) throws {
        try throwBackgroundError()
        let bytes = storage.quantType!.byteCount(elements: rowElements)
        let start = resid.count
        resid.append(contentsOf: repeatElement(0, count: bytes))
        resid.withUnsafeMutableBytes { storage.quantType!.fromFloat(residPost, $0.baseAddress! + start, rowElements) }
        labels.append(Int64(label))
        rows.append(Int64(row))
        nTokens.append(Int32(n))
        if wasTruncated { truncated.append(row) }
        if labels.count == rowsPerShard { try flush() }
    }

    /// Records a row skipped with `--on-error skip` (kept with the shard that covers it).
    public func skip(row: Int, reason: String) {
        skipped.append(SkippedRow(row: row, reason: reason))
    }

    private func flush() throws {
        guard !labels.isEmpty else { return }
        let index = nextIndex
        nextIndex += 1
        let record = ShardRecord(file: Shard.fileName(worker: worker, index: index), index: index,
                                 firstRow: Int(rows.first!), lastRow: Int(rows.last!), count: labels.count, bytes: 0,
                                 sha256: "", skipped: skipped, truncated: truncated)
        let (r, l, ro, t) = (resid, labels, rows, nTokens)
        resid = []; labels = []; rows = []; nTokens = []; skipped = []; truncated = []
        resid.reserveCapacity(rowsPerShard * rowElements * storage.elementSize)
        slots.wait()
        let meta = manifest.metadata
        queue.async { [self] in
            defer { slots.signal() }
            if currentError() != nil { return }
            do {
                let z = try r.withUnsafeBytes { try Shard.encode(metadata: meta, residPost: $0, labels: l, rows: ro, nTokens: t) }
                let path = directory + "/" + record.file
                let w = try AtomicFileWriter(path: path)
                try w.write(z)
                try w.commit()
                var done = record
                done.bytes = z.count
                done.sha256 = SHA256.hex(z)
                lock.lock()
                manifest.shards.append(done)
                bytesWritten += z.count
                rawBytes += r.count
                let snapshot = manifest
                lock.unlock()
                try snapshot.write(to: manifestPath)
            } catch {
                lock.lock(); backgroundError = error; lock.unlock()
            }
        }
    }

    private func currentError() -> Error? { lock.lock(); defer { lock.unlock() }; return backgroundError }
    private func throwBackgroundError() throws { if let e = currentError() { throw e } }

    /// Writes the last partial shard, waits for the background writes and marks the manifest complete.
    public func finish() throws {
        try flush()
        queue.sync {}
        try throwBackgroundError()
        manifest.skippedAfterLastShard = skipped   // skipped rows no later row carried into a shard
        skipped = []
        manifest.complete = true
        try manifest.write(to: manifestPath)
    }

    /// Waits for shards in flight (e.g. before reporting progress or on an error path).
    public func drain() { queue.sync {} }
}

/// A shard directory: every worker's manifest and completed shards.
public struct ShardDirectory {
    public let path: String
    public let manifests: [Manifest]
    public let metadata: ShardMetadata
    /// Every completed shard file, in (worker, index) order.
    public let shardPaths: [String]
    public var totalRows: Int { manifests.reduce(0) { $0 + $1.shards.reduce(0) { $0 + $1.count } } }

    public init(path: String) throws {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw ShardError(file: path, reason: "not a directory")
        }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
            .filter { $0.hasPrefix("manifest-") && $0.hasSuffix(".json") }.sorted()
        guard !names.isEmpty else { throw ShardError(file: path, reason: "no manifest-*.json: not a shard directory (or nothing finished yet)") }
        let ms = try names.map { try Manifest.read(path: path + "/" + $0) }.sorted { $0.worker < $1.worker }
        for m in ms.dropFirst() {
            var a = ms[0], b = m
            a.worker = 0; b.worker = 0
            if let diff = ShardWriter.difference(a, b) {
                throw ShardError(file: path + "/" + Manifest.fileName(worker: m.worker),
                                 reason: "workers disagree with worker \(ms[0].worker): \(diff)")
            }
        }
        manifests = ms
        metadata = ms[0].metadata
        shardPaths = ms.flatMap { m in m.shards.map { path + "/" + $0.file } }
    }
}
