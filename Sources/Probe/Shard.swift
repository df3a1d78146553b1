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
    /// Model identity: the weights fingerprint `weights-v2:…` (the same checkpoint as an HF directory or
    /// its Q8_0 GGUF), "imported:<sha256>" for imports; older shards hold a hash of config and shapes.
    public var model: String
    /// How the model's weights were stored when extracted (e.g. "F32", "BF16", "Q8_0"); nil when unknown.
    public var quantization: String?
    /// How each row became the stored vectors; nil when unknown (imported activations, older shards).
    public var readout: ReadoutRecipe?
    /// Label names in id order.
    public var labels: [String]
    public var template: String
    public var suffix: String
    public var systemPrompt: String
    /// Layer indices stored, in order: with embeddings, HF `hidden_states` indexing (0 = embedding output,
    /// L + 1 = resid_post of block L); without, 0..<L = resid_post of block L.
    public var layers: [Int]
    public var withEmbeddings: Bool
    /// Storage type of resid_post.
    public var dtype: ActivationType
    public var dModel: Int

    enum CodingKeys: String, CodingKey {
        case format, version, model, labels, template, suffix, layers, dtype, quantization, readout
        case systemPrompt = "system_prompt", withEmbeddings = "with_embeddings", dModel = "d_model"
    }

    public init(model: String, labels: [String], template: String, suffix: String, systemPrompt: String,
                layers: [Int], withEmbeddings: Bool, dtype: ActivationType, dModel: Int) {
        self.model = model; self.labels = labels; self.template = template; self.suffix = suffix
        self.systemPrompt = systemPrompt; self.layers = layers; self.withEmbeddings = withEmbeddings
        self.dtype = dtype; self.dModel = dModel
    }

    /// Extracted shards: template, suffix, system prompt and embeddings come from the readout recipe.
    public init(model: String, quantization: String, labels: [String], readout: ReadoutRecipe, layers: [Int], dtype: ActivationType, dModel: Int) {
        self.init(model: model, labels: labels, template: readout.template, suffix: readout.suffix,
                  systemPrompt: readout.systemPrompt ?? "", layers: layers, withEmbeddings: readout.withEmbeddings,
                  dtype: dtype, dModel: dModel)
        self.quantization = quantization
        self.readout = readout
    }

    /// What the readout is, for messages: the recipe, or why it is unknown.
    public var readoutDescription: String {
        if let r = readout { return r.json }
        return ModelIdentity.isImported(model) ? "unknown readout (imported activations)"
            : "unknown readout (shards written before llamaprobe recorded the readout recipe)"
    }

    /// The first field in which two directories' metadata differ, named with both values; nil when equal.
    /// `dtype: false` ignores the storage type (training converts everything to f32 exactly).
    public static func difference(_ a: ShardMetadata, _ b: ShardMetadata, dtype: Bool = true) -> String? {
        if a.model != b.model { return "model fingerprint '\(a.model)' vs '\(b.model)' (\(ModelIdentity.differenceNote(a.model, b.model)))" }
        if a.quantization != b.quantization { return "quantization \(a.quantization ?? "unknown") vs \(b.quantization ?? "unknown")" }
        if a.labels != b.labels { return "labels \(a.labels) vs \(b.labels)" }
        if a.layers != b.layers { return "layers \(a.layers) vs \(b.layers)" }
        if a.dModel != b.dModel { return "d_model \(a.dModel) vs \(b.dModel)" }
        if dtype && a.dtype != b.dtype { return "dtype \(a.dtype) vs \(b.dtype)" }
        switch (a.readout, b.readout) {
        case let (x?, y?):
            if let f = x.differences(y).first { return "readout \(f.field) \(f.mine) vs \(f.theirs)" }
        case (nil, nil): break
        default: return "readout \(a.readoutDescription) vs \(b.readoutDescription)"
        }
        if a.template != b.template { return "template '\(a.template)' vs '\(b.template)'" }
        if a.suffix != b.suffix { return "suffix \(jsonString(a.suffix)) vs \(jsonString(b.suffix))" }
        if a.systemPrompt != b.systemPrompt { return "system_prompt \(jsonString(a.systemPrompt)) vs \(jsonString(b.systemPrompt))" }
        if a.withEmbeddings != b.withEmbeddings { return "with_embeddings \(a.withEmbeddings) vs \(b.withEmbeddings)" }
        if a.format != b.format || a.version != b.version { return "shard format \(a.format) \(a.version) vs \(b.format) \(b.version)" }
        return nil
    }

    var storage: SafeTensorsDType { dtype.safeTensors }

    /// Bounds on what a shard directory may declare (far above any real model; they keep every product of
    /// these numbers inside Int and every allocation they size finite).
    public static let maxDModel = 1 << 20, maxLayers = 1 << 12, maxLabels = 1 << 16, maxRowElements = 1 << 28

    /// The hook points stored, one tensor each (named by the hook), in this order: the readout's, resid_post
    /// when unknown (imports, older shards).
    public var hooks: [String] { readout?.hookList ?? [ReadoutRecipe.defaultHook] }

    /// Elements of one row of one hook: [layers, dModel].
    public var hookRowElements: Int { layers.count * dModel }

    /// Bytes of one row of every hook in the storage type (valid after `validate`).
    var rowBytes: Int { hooks.count * layers.count * dModel * dtype.size }

    /// Every number and name checked before anything is sized by it; throws naming `file` and the field.
    public func validate(file: String) throws {
        func fail(_ r: String) -> ShardError { ShardError(file: file, reason: "shard metadata: " + r) }
        guard (1...Self.maxDModel).contains(dModel) else { throw fail("'d_model' \(dModel) is not in 1...\(Self.maxDModel)") }
        guard !layers.isEmpty, layers.count <= Self.maxLayers else {
            throw fail("'layers' lists \(layers.count) layers (1...\(Self.maxLayers) expected)")
        }
        if let bad = layers.first(where: { !(0..<Self.maxLayers).contains($0) }) { throw fail("layer \(bad) in 'layers' is not in 0..<\(Self.maxLayers)") }
        guard Set(layers).count == layers.count else { throw fail("'layers' lists a layer twice") }
        guard !labels.isEmpty, labels.count <= Self.maxLabels else {
            throw fail("'labels' has \(labels.count) names (1...\(Self.maxLabels) expected)")
        }
        guard Set(labels).count == labels.count else { throw fail("'labels' names a class twice") }
        try readout?.validate(file: file)
        guard hooks.count * layers.count * dModel <= Self.maxRowElements else {
            throw fail("a row of \(hooks.count) hook(s) × \(layers.count) layers × d_model \(dModel) values is more than \(Self.maxRowElements)")
        }
    }

    /// As safetensors `__metadata__` (string values; arrays JSON-encoded).
    var stringMap: [String: String] {
        let json = { (v: [String]) in "[" + v.map(jsonString).joined(separator: ",") + "]" }
        return ["format": format, "version": String(version), "model": model, "labels": json(labels),
                "template": template, "suffix": suffix, "system_prompt": systemPrompt,
                "layers": "[" + layers.map(String.init).joined(separator: ",") + "]",
                "with_embeddings": withEmbeddings ? "true" : "false", "dtype": dtype.rawValue, "d_model": String(dModel)]
            .merging([("readout", readout?.json), ("quantization", quantization)].compactMap { k, v in v.map { (k, $0) } }) { a, _ in a }
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
        func dtype(_ s: String) throws -> ActivationType {
            guard let t = ActivationType(rawValue: s) else { throw ShardError(file: file, reason: "shard metadata: dtype '\(s)' is not F32, F16 or BF16") }
            return t
        }
        guard let d = Int(try need("d_model")) else { throw ShardError(file: file, reason: "shard metadata 'd_model' is not a number") }
        self.init(model: try need("model"), labels: try array("labels", [String].self), template: try need("template"),
                  suffix: try need("suffix"), systemPrompt: try need("system_prompt"), layers: try array("layers", [Int].self),
                  withEmbeddings: try need("with_embeddings") == "true", dtype: try dtype(need("dtype")), dModel: d)
        self.version = version
        self.quantization = m["quantization"]
        self.readout = try m["readout"].map { try ReadoutRecipe.parse($0, file: file) }
        try validate(file: file)
    }
}

/// One decoded shard: one hook's activations (resid_post unless another was asked for) [count, layers, dModel]
/// in f32 (converted from the stored type), labels, the index of each row in the input file, and each row's
/// token count.
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
/// is a safetensors file with `label` I64 [n], `row` I64 [n], `n_tokens` I32 [n], one tensor [n, layers,
/// d_model] per hook point named by the hook (`resid_post`, … in the readout's `hooks` order; resid_post
/// alone by default) and the ShardMetadata as `__metadata__`.
public enum Shard {
    public static let compressionLevel: Int32 = 3

    public static func fileName(worker: Int, index: Int) -> String {
        "shard-\(String(worker).leftPadded(5))-\(String(index).leftPadded(5)).safetensors.zst"
    }

    /// The compressed bytes of a shard whose activations (one buffer per hook of `metadata.hooks`, each
    /// [n, layers, dModel]) are already in the storage type.
    public static func encode(metadata: ShardMetadata, activations: [UnsafeRawBufferPointer], labels: [Int64], rows: [Int64],
                              nTokens: [Int32]) throws -> [UInt8] {
        let dt = metadata.storage
        let n = labels.count
        precondition(activations.count == metadata.hooks.count)
        let st = labels.withUnsafeBytes { l in rows.withUnsafeBytes { r in nTokens.withUnsafeBytes { t in
            // the small tensors first: a reader that needs only labels and rows stops before the activations
            SafeTensors.encode([(.init("label", .i64, [n]), l), (.init("row", .i64, [n]), r), (.init("n_tokens", .i32, [n]), t)]
                + zip(metadata.hooks, activations).map { (.init($0, dt, [n, metadata.layers.count, metadata.dModel]), $1) },
                metadata: metadata.stringMap)
        } } }
        return try Zstd.compress(st, level: compressionLevel)
    }

    /// A shard's metadata, read and checked (with its labels, rows and token counts) without decompressing
    /// the activations.
    public static func metadata(path: String) throws -> ShardMetadata {
        try ShardStream.read(path: path, hook: nil, labelsOnly: true) { _, _ in }.metadata
    }

    /// The bytes of every array (e.g. one per hook for `encode`), valid during `body`.
    public static func withBytes<T, R>(_ arrays: [[T]], _ body: ([UnsafeRawBufferPointer]) throws -> R) throws -> R {
        func go(_ i: Int, _ acc: [UnsafeRawBufferPointer]) throws -> R {
            i == arrays.count ? try body(acc) : try arrays[i].withUnsafeBytes { try go(i + 1, acc + [$0]) }
        }
        return try go(0, [])
    }

    /// Reads a whole shard into memory (tests, tools; training streams with ShardStream). The one shard
    /// reader is ShardStream: the file is decompressed in pieces, so memory follows the data actually present,
    /// never a size declared in the frame header or the safetensors header.
    public static func read(path: String, hook: String = ReadoutRecipe.defaultHook) throws -> ShardBatch {
        var resid: [Float] = []
        var rowElements = 0
        var type = ActivationType.f32
        let c = try ShardStream.read(path: path, hook: hook, header: { m, _ in
            rowElements = m.hookRowElements
            type = m.dtype
        }, rowSink: { _, bytes in
            let start = resid.count
            resid.append(contentsOf: repeatElement(0, count: rowElements))
            resid.withUnsafeMutableBufferPointer { p in
                guard let base = p.baseAddress else { return }
                type.convert(bytes, base + start, rowElements)
            }
        })
        return ShardBatch(metadata: c.metadata, residPost: resid, labels: c.labels, rows: c.rows,
                          nTokens: c.nTokens.map { Int32(truncatingIfNeeded: $0) })
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
    /// The data file's line of each row in `truncated` (same order), when recorded.
    public var truncatedLines: [Int]? = nil

    enum CodingKeys: String, CodingKey {
        case file, index, count, bytes, sha256, skipped, truncated
        case firstRow = "first_row", lastRow = "last_row", truncatedLines = "truncated_lines"
    }
}

public struct SkippedRow: Codable, Equatable, Sendable {
    public var row: Int
    public var reason: String
    /// The data file's line where the row starts, when recorded.
    public var line: Int? = nil
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

    /// Most workers one directory may have, and the largest row number (2^40) a manifest may name.
    public static let maxWorkers = 1 << 16, maxRows = 1 << 40

    /// Reads and validates a manifest (a FIFO or directory is refused without blocking).
    public static func read(path: String) throws -> Manifest {
        let data: Data
        do { data = try Files.readData(path, limit: 1 << 30) } catch {
            throw ShardError(file: path, reason: "cannot read the manifest: \((error as? FileError)?.reason ?? error.localizedDescription)")
        }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) } catch {
            throw ShardError(file: path, reason: "not a valid manifest: \(error.localizedDescription)")
        }
        try m.validate(file: path)
        return m
    }

    /// The manifest's `rows_total` (rows of the input file), when it records one.
    public var rowsTotal: Int? { config["rows_total"].flatMap { Int($0) } }

    /// Every number and name of the manifest checked against each other and against sane bounds, before any
    /// of them sizes an allocation, indexes memory or names a file: the worker numbers, the metadata, each
    /// shard's file name (exactly `shard-WWWWW-IIIII.safetensors.zst` of this worker, its index in order: no
    /// path, no `..`), rows inside the input and this worker's share, counts that fit the rows and the bytes
    /// recorded, checksums of the right form. Throws naming `file`, the field and the problem.
    public func validate(file: String) throws {
        func fail(_ r: String) -> ShardError { ShardError(file: file, reason: r) }
        guard format == "llamaprobe-manifest" else { throw fail("not a llamaprobe manifest (format '\(format)')") }
        guard version == 1 else { throw fail("manifest version \(version) is not supported (this build reads version 1)") }
        guard (1...Self.maxWorkers).contains(workers) else { throw fail("'workers' \(workers) is not in 1...\(Self.maxWorkers)") }
        guard (0..<workers).contains(worker) else { throw fail("'worker' \(worker) is not in 0..<\(workers) ('workers')") }
        try metadata.validate(file: file)
        var rowLimit = Self.maxRows
        if let t = config["rows_total"] {
            guard let n = Int(t), (0...Self.maxRows).contains(n) else { throw fail("'rows_total' \(t) is not a row count in 0...\(Self.maxRows)") }
            rowLimit = n
        }
        let rowBytes = metadata.rowBytes
        var previousLast = -1
        for (i, s) in shards.enumerated() {
            func bad(_ r: String) -> ShardError { fail("shard \(i) ('\(s.file)'): \(r)") }
            let expected = Shard.fileName(worker: worker, index: i)
            guard s.index == i, s.file == expected else {
                throw bad("'file' and 'index' must name this worker's shard \(i), '\(expected)' (a plain file name in the directory)")
            }
            guard (0..<rowLimit).contains(s.firstRow), (s.firstRow..<rowLimit).contains(s.lastRow) else {
                throw bad("rows \(s.firstRow)...\(s.lastRow) are not inside the input's \(rowLimit) rows")
            }
            guard s.firstRow > previousLast else { throw bad("'first_row' \(s.firstRow) is not after the previous shard's last row \(previousLast)") }
            guard s.firstRow % workers == worker, s.lastRow % workers == worker else {
                throw bad("rows \(s.firstRow)...\(s.lastRow) are not rows of worker \(worker)/\(workers)")
            }
            let span = (s.lastRow - s.firstRow) / workers + 1
            guard (1...span).contains(s.count) else {
                throw bad("'count' \(s.count) is not in 1...\(span) (the worker's rows from \(s.firstRow) to \(s.lastRow))")
            }
            // zstd can shrink data at most ~32768-fold (a 4-byte RLE block per 128 KiB): a count above that many
            // rows of the recorded bytes is a lie, whatever the file holds.
            let (cap, o) = s.bytes.multipliedReportingOverflow(by: 32768)
            guard s.bytes > 0, s.bytes <= Self.maxRows, !o, s.count <= cap / (rowBytes + 12) else {
                throw bad("'count' \(s.count) rows cannot fit in \(s.bytes) bytes ('bytes')")
            }
            guard s.sha256.count == 64, s.sha256.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
                throw bad("'sha256' is not 64 lowercase hex digits")
            }
            if let r = s.skipped.first(where: { !(0..<rowLimit).contains($0.row) }) { throw bad("skipped row \(r.row) is outside the input") }
            if let r = s.truncated.first(where: { !(s.firstRow...s.lastRow).contains($0) }) {
                throw bad("truncated row \(r) is outside the shard's rows \(s.firstRow)...\(s.lastRow)")
            }
            if let tl = s.truncatedLines, tl.count != s.truncated.count {
                throw bad("'truncated_lines' has \(tl.count) lines for \(s.truncated.count) 'truncated' rows")
            }
            previousLast = s.lastRow
        }
        if let r = skippedAfterLastShard.first(where: { !(0..<rowLimit).contains($0.row) }) {
            throw fail("skipped row \(r.row) ('skipped_after_last_shard') is outside the input")
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
    /// Elements of one row of one hook ([layers, dModel]).
    private let rowElements: Int
    // The shard being filled: one buffer per hook.
    private var resid: [[UInt8]] = []
    private var labels: [Int64] = [], rows: [Int64] = [], nTokens: [Int32] = []
    private var skipped: [SkippedRow] = [], truncated: [Int] = [], truncatedLines: [Int] = []
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

    /// What the resume check found and redoes (missing or corrupt shards), for the caller to report.
    public private(set) var resumeNotes: [String] = []
    /// The lock that keeps a second process off this worker's files for the whole run.
    private var processLock: ProcessLock?

    /// Creates `directory` if needed and takes the lock `DIR/.lock-WWWWW`, held until released or the
    /// process dies; a second process writing the same worker's shards fails naming the holder's pid.
    public static func lock(directory: String, worker: Int) throws -> ProcessLock {
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw ShardError(file: directory, reason: "cannot create the output directory: \(error.localizedDescription)")
        }
        return try ProcessLock(path: directory + "/.lock-" + String(worker).leftPadded(5),
                               what: "another run writing worker \(worker)'s shards into \(directory)")
    }

    /// `lock`: the lock of `ShardWriter.lock(directory:worker:)` when the caller took it earlier (to hold it
    /// for its whole run); nil takes it here.
    public init(directory: String, worker: Int, workers: Int, metadata: ShardMetadata, rowsPerShard: Int,
                config: [String: String], lock heldLock: ProcessLock? = nil) throws {
        try metadata.validate(file: directory)
        let st = metadata.storage
        guard rowsPerShard > 0 else { throw ShardError(file: directory, reason: "rows per shard must be positive") }
        guard (1...Manifest.maxWorkers).contains(workers), (0..<workers).contains(worker) else {
            throw ShardError(file: directory, reason: "worker \(worker)/\(workers) is not valid")
        }
        self.directory = directory
        self.worker = worker
        self.rowsPerShard = rowsPerShard
        storage = st
        rowElements = metadata.hookRowElements
        processLock = try heldLock ?? Self.lock(directory: directory, worker: worker)
        let fresh = Manifest(worker: worker, workers: workers, config: config, metadata: metadata, shards: [], complete: false)
        let path = directory + "/" + Manifest.fileName(worker: worker)
        if FileManager.default.fileExists(atPath: path) {
            let old = try Manifest.read(path: path)
            if old.metadata.readout == nil && metadata.readout != nil {
                throw ShardError(file: path, reason: "this directory was written by an older llamaprobe (its shards record no readout recipe or weights fingerprint); extract into a new --out directory")
            }
            if let diff = Self.difference(old, fresh) {
                throw ShardError(file: path, reason: "this directory was written with a different configuration (\(diff)); use a new --out directory or the original settings")
            }
            manifest = old
            manifest.complete = false
            // Never trust the manifest blindly: every listed shard must be there with its recorded size and
            // checksum; from the first that is not, the shards are dropped and their rows done again.
            for (i, s) in old.shards.enumerated() {
                let problem: String?
                do {
                    let (size, hex) = try SHA256.file(directory + "/" + s.file, expectedSize: s.bytes)
                    problem = size != s.bytes ? "is \(size) bytes, the manifest says \(s.bytes)"
                        : hex != s.sha256 ? "does not match its recorded sha256 (corrupt or modified)" : nil
                } catch let e as FileError {
                    problem = e.reason
                }
                if let problem {
                    let dropped = old.shards.count - i
                    resumeNotes.append("\(directory)/\(s.file) \(problem): redoing rows from \(s.firstRow) (\(dropped) shard\(dropped == 1 ? "" : "s") dropped from the manifest)")
                    manifest.shards.removeSubrange(i...)
                    break
                }
            }
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
        resid = Array(repeating: [], count: metadata.hooks.count)
        reserve()
    }

    private func reserve() {
        for h in resid.indices { resid[h].reserveCapacity(rowsPerShard * rowElements * storage.elementSize) }
    }

    /// What differs between two manifests' configurations, or nil.
    static func difference(_ a: Manifest, _ b: Manifest) -> String? {
        if a.workers != b.workers { return "workers: \(a.workers) vs \(b.workers)" }
        for k in Set(a.config.keys).union(b.config.keys).sorted() where a.config[k] != b.config[k] {
            return "\(k): '\(a.config[k] ?? "unset")' before, '\(b.config[k] ?? "unset")' now"
        }
        if let d = ShardMetadata.difference(a.metadata, b.metadata) { return d }
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

    /// `activations`: the row of every hook of the metadata, hook after hook, each [layers, dModel].
    /// `line`: the data file's line of the row (recorded for truncated rows).
    public func append(row: Int, label: Int, nTokens n: Int, activations: UnsafePointer<Float>, truncated wasTruncated: Bool = false,
                       line: Int? = nil) throws {
        try throwBackgroundError()
        let bytes = storage.quantType!.byteCount(elements: rowElements)
        for h in resid.indices {
            let start = resid[h].count
            resid[h].append(contentsOf: repeatElement(0, count: bytes))
            resid[h].withUnsafeMutableBytes { storage.quantType!.fromFloat(activations + h * rowElements, $0.baseAddress! + start, rowElements) }
        }
        labels.append(Int64(label))
        rows.append(Int64(row))
        nTokens.append(Int32(n))
        if wasTruncated { truncated.append(row); truncatedLines.append(line ?? 0) }
        if labels.count == rowsPerShard { try flush() }
    }

    /// Records a row skipped with `--on-error skip` (kept with the shard that covers it).
    public func skip(row: Int, reason: String, line: Int? = nil) {
        skipped.append(SkippedRow(row: row, reason: reason, line: line))
    }

    private func flush() throws {
        guard !labels.isEmpty else { return }
        let index = nextIndex
        nextIndex += 1
        let record = ShardRecord(file: Shard.fileName(worker: worker, index: index), index: index,
                                 firstRow: Int(rows.first!), lastRow: Int(rows.last!), count: labels.count, bytes: 0,
                                 sha256: "", skipped: skipped, truncated: truncated,
                                 truncatedLines: truncatedLines.contains(where: { $0 > 0 }) ? truncatedLines : nil)
        let (r, l, ro, t) = (resid, labels, rows, nTokens)
        resid = Array(repeating: [], count: r.count); labels = []; rows = []; nTokens = []; skipped = []; truncated = []; truncatedLines = []
        reserve()
        slots.wait()
        let meta = manifest.metadata
        queue.async { [self] in
            defer { slots.signal() }
            if currentError() != nil { return }
            do {
                let z = try Shard.withBytes(r) { try Shard.encode(metadata: meta, activations: $0, labels: l, rows: ro, nTokens: t) }
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
                rawBytes += r.reduce(0) { $0 + $1.count }
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
        processLock?.release()
        processLock = nil
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
        let ms = try names.map { name in
            let m = try Manifest.read(path: path + "/" + name)
            guard name == Manifest.fileName(worker: m.worker) else {
                throw ShardError(file: path + "/" + name, reason: "holds the manifest of worker \(m.worker); its name must be \(Manifest.fileName(worker: m.worker))")
            }
            return m
        }.sorted { $0.worker < $1.worker }
        for m in ms.dropFirst() {
            var a = ms[0], b = m
            a.worker = 0; b.worker = 0
            if let diff = ShardWriter.difference(a, b) {
                throw ShardError(file: path + "/" + Manifest.fileName(worker: m.worker),
                                 reason: "workers disagree with worker \(ms[0].worker): \(diff)")
            }
        }
        // Counts against the input: every worker's rows together cannot exceed rows_total (each is bounded
        // by its own rows already, so the sum cannot overflow).
        let rows = ms.reduce(0) { $0 + $1.shards.reduce(0) { $0 + $1.count } }
        if let total = ms[0].rowsTotal, rows > total {
            throw ShardError(file: path, reason: "the manifests list \(rows) rows but 'rows_total' is \(total)")
        }
        manifests = ms
        metadata = ms[0].metadata
        shardPaths = ms.flatMap { m in m.shards.map { path + "/" + $0.file } }
    }
}
