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
    /// Hook points stored, one tensor each, in this order (`--hooks`).
    public var hooks: [Hook] = [.residPost]
    /// The position read: one of `ReadoutRecipe.positions` (`--position`).
    public var position = "last"
    /// Layers kept, in the shards' numbering (with embeddings: 0 = the embedding output); nil = all (`--layers`).
    public var layers: [Int]?
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
        /// Positions read (averaged when several).
        let positions: [Int]
    }

    public static func run(_ cfg: ExtractionConfig, log: (String) -> Void = { _ in },
                           progress: (ExtractionProgress) -> Void = { _ in }) throws -> ExtractionSummary {
        guard cfg.workers >= 1, (0..<cfg.workers).contains(cfg.worker) else {
            throw ExtractionError("worker \(cfg.worker)/\(cfg.workers) is not valid: need 0 <= I < N")
        }
        guard cfg.maxTokens >= 8 else { throw ExtractionError("--max-tokens \(cfg.maxTokens) is too small") }
        guard !cfg.hooks.isEmpty, Set(cfg.hooks).count == cfg.hooks.count else { throw ExtractionError("--hooks must name distinct hook points") }
        guard !cfg.withEmbeddings || cfg.hooks == [.residPost] else {
            throw ExtractionError("--with-embeddings stores the embedding output as layer 0 of resid_post; it cannot be combined with --hooks \(cfg.hooks.map(\.rawValue).joined(separator: ",")) (resid_pre of layer 0 is the embedding output)")
        }
        guard ReadoutRecipe.positions.contains(cfg.position) else {
            throw ExtractionError("--position '\(cfg.position)' is not one of \(ReadoutRecipe.positions.joined(separator: ", "))")
        }
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
            // Resuming: a template that reads the clock (Llama-3.2's "Today Date") keeps the day the shards
            // already written record, unless --date says otherwise.
            var recordedDay: String? = nil
            if renderer.dateString == nil, renderer.clockDay == nil, Files.isDirectory(cfg.outDir),
               let day = (try? ShardDirectory(path: cfg.outDir))?.metadata.readout?.chat?.today {
                recordedDay = day
            }
            let (r, note) = try renderer.resolved(for: try LoadedModel.chatInfo(forModel: cfg.modelPath), tokenizer: tokenizer, today: recordedDay)
            renderer = r
            if let note { log(note) }
            if let recordedDay, r.chat?.today == recordedDay {
                log("note: resuming with the day the shards in \(cfg.outDir) record for the template's date: \(recordedDay) (pass --date to change it)")
            }
        }
        var readout = ReadoutRecipe(renderer: renderer, maxTokens: cfg.maxTokens, withEmbeddings: cfg.withEmbeddings, tokenizer: tokenizer)
        readout.position = cfg.position
        readout.hooks = cfg.hooks == [.residPost] ? nil : cfg.hooks.map(\.rawValue)
        var jobs: [Job] = [], skipped: [BadRow] = []
        for (index, r) in data.rows.enumerated() where index % cfg.workers == cfg.worker {
            do {
                let row = try r.get()
                guard let id = labelID[row.label] else {
                    throw DatasetError(file: cfg.dataPath, row: index, line: row.line,
                                       reason: "unknown label '\(row.label)' (labels: \(labels.joined(separator: ", ")))")
                }
                let p: ReadoutPrompt
                do {
                    p = try readout.prompt(row.content, tokenizer: tokenizer, renderer: renderer)
                } catch {
                    throw DatasetError(file: cfg.dataPath, row: index, line: row.line, reason: error.localizedDescription)
                }
                jobs.append(Job(row: index, line: row.line, label: id, ids: p.ids, truncated: p.truncated, positions: p.positions))
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
        let kept = try keptLayers(cfg.layers, count: layerCount, withEmbeddings: cfg.withEmbeddings)
        var slotOfLayer = [Int](repeating: -1, count: layerCount)
        for (i, l) in kept.enumerated() { slotOfLayer[l] = i }
        let metadata = ShardMetadata(model: loaded.fingerprint, quantization: loaded.quantization, labels: labels, readout: readout,
                                     layers: kept, dtype: cfg.dtype, dModel: c.hiddenSize)
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
        let hookSlot = Dictionary(uniqueKeysWithValues: cfg.hooks.enumerated().map { ($1, $0) })
        let hookStride = kept.count * d
        var rowBuffer = [Float](repeating: 0, count: cfg.hooks.count * hookStride)
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
                try loaded.model.forward(job.ids, positions: cfg.position == "last" ? .last : .all, steering: steering,
                                         hooks: Set(cfg.hooks)) { point, view in
                    let h: Int, layer: Int
                    if let (hook, l) = point.hook {
                        guard let k = hookSlot[hook] else { return }
                        (h, layer) = (k, l + (cfg.withEmbeddings ? 1 : 0))
                    } else {
                        guard cfg.withEmbeddings else { return }   // the embedding: layer 0 of resid_post (the only hook then)
                        (h, layer) = (0, 0)
                    }
                    let slot = slotOfLayer[layer]
                    guard slot >= 0 else { return }
                    Self.read(view, positions: job.positions, into: base + h * hookStride + slot * d)
                }
                try writer.append(row: job.row, label: job.label, nTokens: job.ids.count, activations: base, truncated: job.truncated,
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

    /// Row `positions[0]` of `view`, or the mean of the rows at `positions` (summed in Double in order, then
    /// divided), into `out` (`view.width` floats).
    static func read(_ view: ResidualRows, positions: [Int], into out: UnsafeMutablePointer<Float>) {
        let d = view.width
        if positions.count == 1 { out.update(from: view.row(position: positions[0]), count: d); return }
        var sum = [Double](repeating: 0, count: d)
        for p in positions {
            let r = view.row(position: p)
            for j in 0..<d { sum[j] += Double(r[j]) }
        }
        let n = Double(positions.count)
        for j in 0..<d { out[j] = Float(sum[j] / n) }
    }

    /// `--layers`: the layers kept, ascending; nil = all `count`. Refuses numbers outside the model, naming them.
    static func keptLayers(_ wanted: [Int]?, count: Int, withEmbeddings: Bool) throws -> [Int] {
        guard let wanted else { return Array(0..<count) }
        guard !wanted.isEmpty else { throw ExtractionError("--layers names no layer") }
        if let bad = wanted.first(where: { !(0..<count).contains($0) }) {
            throw ExtractionError("--layers: layer \(bad) is not in 0...\(count - 1) (the model's \(count) \(withEmbeddings ? "hidden states, 0 = the embedding output" : "layers"))")
        }
        guard Set(wanted).count == wanted.count else { throw ExtractionError("--layers lists a layer twice") }
        return wanted.sorted()
    }

    /// The tokens the model reads for one row: the rendered prompt, and when it has more than `maxTokens`
    /// tokens, BOS (when the tokenizer adds one) plus its last `maxTokens - 1` (content is dropped from the start: the readout suffix must
    /// survive). Only a tail of a long prompt is tokenized: 16 bytes per kept token, cut after a whitespace
    /// run (where SentencePiece pieces begin), enlarged fourfold while fewer than `maxTokens + 16` tokens come
    /// out, so the tokens kept come from well after the cut and memory follows --max-tokens, not the length
    /// of a field. Extraction and prediction both use it.
    public static func promptTokens(_ content: DatasetRow.Content, tokenizer: Tokenizer, renderer: PromptRenderer,
                                    maxTokens: Int) throws -> (ids: [Int32], truncated: Bool) {
        let e = try encodePrompt(try renderer.render(content), renderer: renderer, tokenizer: tokenizer, maxTokens: maxTokens)
        return (e.ids, e.truncated)
    }

    /// A rendered prompt and how it was tokenized: `encoded` are the ids of `text[start...]` (the whole text
    /// unless a long prompt was cut, see `promptTokens`), `ids` the ones kept; `kept[i]` is the index in
    /// `encoded` of `ids[i]`; `addedBOS`: `encoded` begins with a BOS the tokenizer added (not spelled by the text).
    struct EncodedPrompt {
        let text: [UInt8]
        let start: Int
        let addedBOS: Bool
        let encoded: [Int32]
        let ids: [Int32]
        let kept: [Int]
        var truncated: Bool { ids.count < encoded.count }
    }

    static func encodePrompt(_ text: String, renderer: PromptRenderer, tokenizer: Tokenizer, maxTokens: Int) throws -> EncodedPrompt {
        guard maxTokens >= 2 else { throw ExtractionError("--max-tokens \(maxTokens) is too small") }
        // A chat template's render carries its BOS text: no second one (apply_chat_template(tokenize=True)).
        let addBOS = renderer.addsBOS(to: text)
        let bytes = Array(text.utf8)
        let (b, o) = max(maxTokens, 1).multipliedReportingOverflow(by: 16)
        var budget = o ? Int.max / 8 : b
        while true {
            let ids: [Int32]
            var start = 0
            let cut = budget < bytes.count
            if cut {
                start = bytes.count - budget
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
            var kept = Array(ids.indices)
            if ids.count > maxTokens {
                // BOS stays first when the tokenizer adds one (Qwen2's adds none: the tail alone).
                kept = tokenizer.addsBOS && !ids.isEmpty ? [0] + Array((ids.count - maxTokens + 1)..<ids.count)
                    : Array((ids.count - maxTokens)..<ids.count)
            }
            return EncodedPrompt(text: bytes, start: start, addedBOS: tokenizer.addsBOS && (cut || addBOS), encoded: ids,
                                 ids: kept.map { ids[$0] }, kept: kept)
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
