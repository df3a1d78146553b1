import Foundation
import Model
import Probe
import Quant
import Formats

public struct ExtractionError: LocalizedError, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var errorDescription: String? { reason }
}

/// Everything that determines an extraction's output.
public struct ExtractionConfig: Sendable {
    public enum OnError: String, Sendable, CaseIterable { case fail, skip }

    public var modelPath: String
    public var tokenizerPath: String?
    public var dataPath: String
    public var outDir: String
    public var textColumn = "message"
    public var labelColumn = "label"
    /// CSV field separator; nil = by the file's extension (tab for .tsv/.tab, else comma).
    public var delimiter: UInt8?
    public var labels: [String]?
    public var renderer = PromptRenderer()
    public var maxTokens = 2048
    public var withEmbeddings = false
    public var dtype: ActivationType = .f32
    public var rowsPerShard = 256
    public var threads = ThreadPool.defaultThreadCount
    public var worker = 0
    public var workers = 1
    public var onError = OnError.fail
    public var backend = Backend.simd
    public var kernel = Q8Kernel.detected
    /// Interventions (`--steer-…`), validated against the model once it is loaded and recorded in the readout.
    public var interventions: [Intervention] = []

    public init(modelPath: String, dataPath: String, outDir: String) {
        self.modelPath = modelPath; self.dataPath = dataPath; self.outDir = outDir
    }
}

public struct ExtractionProgress: Sendable {
    public let rowsDone: Int
    public let rowsTotal: Int
    public let tokensDone: Int
    public let seconds: Double
    public var tokensPerSecond: Double { seconds > 0 ? Double(tokensDone) / seconds : 0 }
}

public struct ExtractionSummary: Sendable {
    public var rows = 0
    public var rowsAlreadyDone = 0
    public var skipped = 0
    public var truncated = 0
    public var tokens = 0
    public var seconds = 0.0
    public var bytesWritten = 0
    public var rawBytes = 0
    /// "file:line (row R): reason" of each row skipped in this run, and "file:line (row R)" of each truncated one.
    public var skippedRows: [String] = []
    public var truncatedRows: [String] = []
    public var tokensPerSecond: Double { seconds > 0 ? Double(tokens) / seconds : 0 }
    public var compressionRatio: Double { bytesWritten > 0 ? Double(rawBytes) / Double(bytesWritten) : 0 }
}

/// `llamaprobe extract`: a labelled dataset in, per row the residual stream after every layer at the readout
/// (last) token, into zstd-compressed shards. Resumable; rows are split across workers by `row % N == I`.
public enum Extractor {
    /// One row ready to run.
    struct Job {
        let row: Int
        let line: Int
        let label: Int
        let ids: [Int32]
        let truncated: Bool
    }

    public static func run(_ cfg: ExtractionConfig, log: (String) -> Void = { _ in },
                           progress: (ExtractionProgress) -> Void = { _ in }) throws -> ExtractionSummary {
        guard cfg.workers >= 1, (0..<cfg.workers).contains(cfg.worker) else {
            throw ExtractionError("worker \(cfg.worker)/\(cfg.workers) is not valid: need 0 <= I < N")
        }
        guard cfg.maxTokens >= 8 else { throw ExtractionError("--max-tokens \(cfg.maxTokens) is too small") }
        let data = try Dataset(path: cfg.dataPath, textColumn: cfg.textColumn, labelColumn: cfg.labelColumn, delimiter: cfg.delimiter)
        let labels = try labelNames(cfg, data)
        let labelID = Dictionary(uniqueKeysWithValues: labels.enumerated().map { ($1, $0) })
        let (labelText, emptyClasses) = labelReport(labels, data)
        log("classes (id=label (rows)): \(labelText)\(cfg.labels == nil ? "" : " (from --labels)")")
        if !emptyClasses.isEmpty {
            log("warning: \(emptyClasses.count) class(es) have no rows: \(emptyClasses.joined(separator: ", ")); `train` refuses them unless --allow-empty-classes (or pass --labels with only the classes present)")
        }

        // Tokenize this worker's rows first: every row error is found before anything is written.
        let tokenizer = try cfg.tokenizerPath.map { try Tokenizer(path: $0) } ?? LoadedModel.tokenizer(forModel: cfg.modelPath)
        // The chat templates render with the model's own template and special tokens.
        var renderer = cfg.renderer
        if renderer.template.isJinja {
            let (r, note) = try renderer.resolved(for: try LoadedModel.chatInfo(forModel: cfg.modelPath), tokenizer: tokenizer)
            renderer = r
            if let note { log(note) }
        }
        var readout = ReadoutRecipe(renderer: renderer, maxTokens: cfg.maxTokens, withEmbeddings: cfg.withEmbeddings, tokenizer: tokenizer)
        var jobs: [Job] = [], skipped: [BadRow] = []
        for (index, r) in data.rows.enumerated() where index % cfg.workers == cfg.worker {
            do {
                let row = try r.get()
                guard let id = labelID[row.label] else {
                    throw DatasetError(file: cfg.dataPath, row: index, line: row.line,
                                       reason: "unknown label '\(row.label)' (labels: \(labels.joined(separator: ", ")))")
                }
                let ids: [Int32], truncated: Bool
                do {
                    (ids, truncated) = try readout.tokens(row.content, tokenizer: tokenizer, renderer: renderer)
                } catch {
                    throw DatasetError(file: cfg.dataPath, row: index, line: row.line, reason: error.localizedDescription)
                }
                jobs.append(Job(row: index, line: row.line, label: id, ids: ids, truncated: truncated))
            } catch let e as DatasetError {
                guard cfg.onError == .skip else { throw e }
                skipped.append(BadRow(index: index, line: e.line ?? 0, reason: e.reason))
            }
        }

        // One process per (worker, directory), from here (every row is readable: nothing is created on bad
        // input) to the end: the model load, every shard and the manifest.
        let lock = try ShardWriter.lock(directory: cfg.outDir, worker: cfg.worker)
        defer { lock.release() }
        let t0 = Date()
        let loaded = try LoadedModel.load(path: cfg.modelPath, tokenizerPath: cfg.tokenizerPath, threads: cfg.threads,
                                          backend: cfg.backend, kernel: cfg.kernel)
        let c = loaded.config
        if let big = jobs.first(where: { $0.ids.count > c.maxPositionEmbeddings }) {
            throw ExtractionError("row \(big.row) has \(big.ids.count) tokens, more than the model's \(c.maxPositionEmbeddings) positions; lower --max-tokens")
        }
        log(String(format: "loaded %@ in %.1f s (%@)", cfg.modelPath, Date().timeIntervalSince(t0), computeDescription(loaded.model)))

        let steering = try Steering(cfg.interventions, config: c)
        readout.steering = steering.records
        let layerCount = c.numHiddenLayers + (cfg.withEmbeddings ? 1 : 0)
        let metadata = ShardMetadata(model: loaded.fingerprint, quantization: loaded.quantization, labels: labels, readout: readout,
                                     layers: Array(0..<layerCount), dtype: cfg.dtype, dModel: c.hiddenSize)
        let writer = try ShardWriter(directory: cfg.outDir, worker: cfg.worker, workers: cfg.workers, metadata: metadata,
                                     rowsPerShard: cfg.rowsPerShard, config: try manifestConfig(cfg, data: data, compute: computeDescription(loaded.model)),
                                     lock: lock)
        for note in writer.resumeNotes { log("warning: " + note) }
        var summary = ExtractionSummary()
        let resumeAfter = writer.lastCompletedRow ?? -1
        summary.rowsAlreadyDone = writer.completedRows
        if resumeAfter >= 0 { log("resuming after row \(resumeAfter): \(writer.completedRows) rows already in \(writer.manifest.shards.count) shards") }

        // Rows and skips in input order, from the first row not in a completed shard.
        var events: [(row: Int, job: Job?, skip: BadRow?)] = jobs.filter { $0.row > resumeAfter }.map { ($0.row, $0, nil) }
        events += skipped.filter { $0.index > resumeAfter }.map { ($0.index, nil, $0) }
        events.sort { $0.row < $1.row }
        let todo = events.compactMap(\.job).count
        let d = c.hiddenSize
        var rowBuffer = [Float](repeating: 0, count: layerCount * d)
        let start = Date()
        var done = 0
        for e in events {
            if let bad = e.skip {
                writer.skip(row: bad.index, reason: bad.reason, line: bad.line)
                summary.skipped += 1
                summary.skippedRows.append("\(cfg.dataPath):\(bad.line) (row \(bad.index)): \(bad.reason)")
                continue
            }
            let job = e.job!
            try rowBuffer.withUnsafeMutableBufferPointer { buf in
                let base = buf.baseAddress!
                try loaded.model.forward(job.ids, positions: .last, steering: steering) { point, view in
                    switch point {
                    case .embedding where cfg.withEmbeddings: base.update(from: view.row(position: job.ids.count - 1), count: d)
                    case .embedding: break
                    case .residPost(let l):
                        (base + (l + (cfg.withEmbeddings ? 1 : 0)) * d).update(from: view.row(position: job.ids.count - 1), count: d)
                    default: break   // only resid_post is requested
                    }
                }
                try writer.append(row: job.row, label: job.label, nTokens: job.ids.count, residPost: base, truncated: job.truncated,
                                  line: job.line)
            }
            done += 1
            summary.rows += 1
            summary.tokens += job.ids.count
            if job.truncated { summary.truncated += 1; summary.truncatedRows.append("\(cfg.dataPath):\(job.line) (row \(job.row))") }
            progress(ExtractionProgress(rowsDone: done, rowsTotal: todo, tokensDone: summary.tokens,
                                        seconds: Date().timeIntervalSince(start)))
        }
        try writer.finish()
        summary.seconds = Date().timeIntervalSince(start)
        summary.bytesWritten = writer.bytesWritten
        summary.rawBytes = writer.rawBytes
        return summary
    }

    /// The tokens the model reads for one row: the rendered prompt, and when it has more than `maxTokens`
    /// tokens, BOS (when the tokenizer adds one) plus its last `maxTokens - 1` (content is dropped from the start: the readout suffix must
    /// survive). Only a tail of a long prompt is tokenized: 16 bytes per kept token, cut after a whitespace
    /// run (where SentencePiece pieces begin), enlarged fourfold while fewer than `maxTokens + 16` tokens come
    /// out, so the tokens kept come from well after the cut and memory follows --max-tokens, not the length
    /// of a field. Extraction and prediction both use it.
    public static func promptTokens(_ content: DatasetRow.Content, tokenizer: Tokenizer, renderer: PromptRenderer,
                                    maxTokens: Int) throws -> (ids: [Int32], truncated: Bool) {
        guard maxTokens >= 2 else { throw ExtractionError("--max-tokens \(maxTokens) is too small") }
        let text: String
        switch content {
        case .message(let m): text = try renderer.render(m)
        case .conversation(let t): text = try renderer.render(messages: t.map { ChatMessage(role: $0.role, content: $0.content) })
        }
        // A chat template's render carries its BOS text: no second one (apply_chat_template(tokenize=True)).
        let addBOS = renderer.addsBOS(to: text)
        let bytes = Array(text.utf8)
        let (b, o) = max(maxTokens, 1).multipliedReportingOverflow(by: 16)
        var budget = o ? Int.max / 8 : b
        while true {
            var ids: [Int32]
            let cut = budget < bytes.count
            if cut {
                var start = bytes.count - budget
                let limit = min(bytes.count, start + 1024)
                func space(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0A || c == 0x09 || c == 0x0D }
                var i = start
                while i < limit && !space(bytes[i]) { i += 1 }
                if i < limit {
                    while i < bytes.count && space(bytes[i]) { i += 1 }
                    start = i
                } else {
                    while start < bytes.count && bytes[start] & 0xC0 == 0x80 { start += 1 }   // a character boundary
                }
                ids = try tokenizer.encode(String(decoding: bytes[start...], as: UTF8.self), addBOS: true)
                if ids.count < maxTokens + 16 {   // the tail was too short: keep more of the text
                    budget = budget > Int.max / 8 ? bytes.count : budget * 4
                    continue
                }
            } else {
                ids = try tokenizer.encode(text, addBOS: addBOS)
            }
            let truncated = ids.count > maxTokens
            if truncated {
                // BOS stays first when the tokenizer adds one (Qwen2's adds none: the tail alone).
                if tokenizer.addsBOS, let bos = ids.first { ids = [bos] + ids[(ids.count - maxTokens + 1)...] }
                else { ids = Array(ids[(ids.count - maxTokens)...]) }
            }
            return (ids, truncated)
        }
    }

    /// The class order: --labels; else the recipe's seven states when every label is among them; else the
    /// distinct labels found, sorted (`Dataset.labelOrder`: integers numerically).
    static func labelNames(_ cfg: ExtractionConfig, _ data: Dataset) throws -> [String] {
        if let l = cfg.labels {
            guard !l.isEmpty, !l.contains(""), Set(l).count == l.count else { throw ExtractionError("--labels must be distinct, non-empty names") }
            return l
        }
        let found = data.labelsFound
        guard !found.isEmpty else { throw ExtractionError("\(cfg.dataPath): no readable row (every row has an error): no labels to train on") }
        if found.allSatisfy(defaultEmotionLabels.contains) { return defaultEmotionLabels }
        return Dataset.labelOrder(found)
    }

    /// The class order with each class's row count, and the classes without rows (to be reported).
    public static func labelReport(_ labels: [String], _ data: Dataset) -> (text: String, empty: [String]) {
        let counts = data.labelCounts
        let text = labels.enumerated().map { "\($0)=\($1) (\(counts[$1, default: 0]))" }.joined(separator: ", ")
        return (text, labels.filter { counts[$0, default: 0] == 0 })
    }

    /// The configuration every worker and every rerun must share (written to the manifests).
    /// How the numbers are computed (part of the configuration: another kernel gives other low bits).
    static func computeDescription(_ m: LlamaModel) -> String {
        let quantized = m.weights.layers.contains { l in l.projections.contains { $0.storage == "Q8_0" } }
        return quantized ? "Q8_0 weights, " + m.engine.description : "f32 weights, OpenBLAS sgemm"
    }

    static func manifestConfig(_ cfg: ExtractionConfig, data: Dataset, compute: String) throws -> [String: String] {
        let hash: String
        do { hash = try SHA256.file(cfg.dataPath).hex } catch let e as FileError {
            throw DatasetError(file: cfg.dataPath, reason: "cannot read: \(e.reason)")
        }
        return [
            "data_file": (cfg.dataPath as NSString).lastPathComponent,
            "data_sha256": hash,
            "rows_total": String(data.rows.count),
            "text_column": cfg.textColumn, "label_column": cfg.labelColumn,
            // the readout recipe and the model fingerprint are in the metadata
            "dtype": cfg.dtype.rawValue, "rows_per_shard": String(cfg.rowsPerShard), "on_error": cfg.onError.rawValue,
            "compute": compute,
        ]
    }
}
