import Foundation
import Quant
import Formats

/// Everything `llamaprobe train` needs.
public struct TrainJobOptions: Sendable {
    public var shardDirectories: [String]
    public var outDirectory: String
    public var config = TrainConfig()
    /// Layer numbers to train (as stored in the shards); nil = all.
    public var layers: [Int]?
    /// Decoded data up to this many bytes is kept in memory; more is streamed every epoch.
    public var maxMemory: Int
    public var splitPath: String?
    public var initPath: String?
    /// Replace the files of an existing non-empty --out directory.
    public var overwrite = false
    /// Train although a class of the label set has no rows (refused otherwise).
    public var allowEmptyClasses = false

    public init(shardDirectories: [String], outDirectory: String, maxMemory: Int = TrainJob.defaultMaxMemory) {
        self.shardDirectories = shardDirectories; self.outDirectory = outDirectory; self.maxMemory = maxMemory
    }
}

/// What a finished run reports.
public struct TrainJobResult: Sendable {
    public var outcomes: [LayerOutcome]
    public var bestLayer: Int
    public var trainRows: Int
    public var valRows: Int
    public var streamed: Bool
    public var dataBytes: Int
    public var loadSeconds: Double
    public var trainSeconds: Double
    public var files: [String]
}

/// `llamaprobe train`: shards → split → one probe per layer → checkpoints, metrics and a report, all
/// written to a temporary directory next to --out and renamed into place at the end.
public enum TrainJob {
    /// Default --max-memory: 70% of the physical memory.
    public static var defaultMaxMemory: Int { Int(Double(ProcessInfo.processInfo.physicalMemory) * 0.7) }

    public static func run(_ o: TrainJobOptions, log: (String) -> Void = { _ in },
                           progress: ((TrainProgress) -> Void)? = nil) throws -> TrainJobResult {
        var config = o.config
        try config.validate()
        let out = o.outDirectory
        try checkOutput(out, overwrite: o.overwrite)
        let t0 = Date()
        let inv = try ShardInventory(directories: o.shardDirectories)
        let meta = inv.metadata
        if meta.readout == nil { log("warning: \(meta.readoutDescription): predict will ask for the readout flags (--template, --suffix, --system-prompt, --max-tokens) or use its defaults") }
        for u in inv.unfinished { log("warning: \(u): this worker has not finished; training on its completed shards only") }
        if inv.datasets.count > 1 {
            log("\(inv.datasets.count) datasets: " + inv.datasets.map { "\($0.name) (row numbers from \($0.firstRow))" }.joined(separator: ", "))
        }
        guard meta.labels.count >= 2 else { throw ShardError(file: o.shardDirectories[0], reason: "the shards have \(meta.labels.count) label(s); a probe needs at least 2 classes") }
        let keep = try DataLoader.layerIndices(meta, requested: o.layers)
        let layerNumbers = keep.map { meta.layers[$0] }
        let type = inv.storageType
        let rowBytes = keep.count * meta.dModel * type.size
        let dataBytes = inv.totalRows * rowBytes
        let pool = ThreadPool(threads: config.threads)
        let source: ActivationSource
        let index: RowIndex
        let streamed = dataBytes > o.maxMemory
        if streamed {
            log("decoded data would take \(formatBytes(dataBytes)) > --max-memory \(formatBytes(o.maxMemory)): streaming from \(inv.shards.count) shards every epoch")
            index = try DataLoader.scanLabels(inv, pool: pool)
            let maxBatch = max(config.batchSize, config.valBatchSize)
            let budgetRows = max(0, o.maxMemory / max(rowBytes, 1) - maxBatch)
            source = StreamingActivations(inventory: inv, keep: keep, type: type, index: index,
                                          bufferRows: max(budgetRows, config.batchSize), maxBatch: maxBatch)
        } else {
            log("decoding \(inv.totalRows) rows from \(inv.shards.count) shards (\(keep.count) layers, \(formatBytes(dataBytes)) in memory as \(type.rawValue))")
            let r = try DataLoader.loadResident(inv, keep: keep, type: type, pool: pool)
            source = r.0
            index = r.1
        }
        let loadSeconds = Date().timeIntervalSince(t0)

        // The split, over positions (rows in increasing order).
        let labels = index.labelsByPosition
        let rowsByPosition = index.rowsByPosition
        var counts = [Int](repeating: 0, count: meta.labels.count)
        for l in labels { counts[Int(l)] += 1 }
        let empty = counts.indices.filter { counts[$0] == 0 }.map { meta.labels[$0] }
        if !empty.isEmpty {
            let what = "\(empty.count) of the \(meta.labels.count) classes have no rows: \(empty.map { "'\($0)'" }.joined(separator: ", "))"
            guard o.allowEmptyClasses else {
                throw TrainError("\(what) (labels: \(meta.labels.joined(separator: ","))); extract with --labels naming only the classes present, or pass --allow-empty-classes to train them as always 0")
            }
            log("warning: \(what); their outputs are trained as always 0 (--allow-empty-classes)")
        }
        let train: [Int], val: [Int]
        let splitSource: String
        if let sp = o.splitPath {
            let s = try SplitFile.read(path: sp)
            let positionOfRow = Dictionary(uniqueKeysWithValues: rowsByPosition.enumerated().map { ($1, $0) })
            func map(_ rows: [Int], _ what: String) throws -> [Int] {
                try rows.map { r in
                    guard let p = positionOfRow[r] else { throw SplitError("\(sp): \(what) row \(r) is not in the shards") }
                    return p
                }
            }
            train = try map(s.train, "train"); val = try map(s.val, "val")
            let all = train + val
            if Set(all).count != all.count { throw SplitError("\(sp): a row is listed twice (or in both train and val)") }
            if train.isEmpty { throw SplitError("\(sp): the train list is empty") }
            splitSource = "split from `\(sp)`"
        } else {
            let r = try StratifiedSplit.trainTestSplit(labels: labels.map { Int($0) }, testFraction: config.valFraction,
                                                       seed: UInt32(config.seed), labelNames: meta.labels)
            train = r.train; val = r.test
            splitSource = "stratified \(Int((1 - config.valFraction) * 100))/\(Int((config.valFraction * 100).rounded())) split as scikit-learn's train_test_split(random_state=\(config.seed))"
        }
        if val.isEmpty { log("warning: no validation rows: no best checkpoint will be written") }

        // Initial probes.
        let classes = meta.labels.count
        var initSource = "N(0, 0.02) from ProbeRNG(seed \(config.seed), stream 1 + layer), bias 0"
        let initial: [(weight: [Float], bias: [Float])]
        if let ip = o.initPath {
            let f: SafeTensorsFile
            do { f = try SafeTensorsFile(path: ip) } catch { throw TrainError("--init: \(error.localizedDescription)") }
            initial = try layerNumbers.map { l in
                func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
                    guard let t = f.tensors[name] else { throw SafeTensorsError(file: ip, tensor: name, reason: "missing (--init needs layer\(l).weight and layer\(l).bias for every trained layer)") }
                    guard t.shape == shape else { throw SafeTensorsError(file: ip, tensor: name, reason: "shape \(t.shape), expected \(shape)") }
                    let v = try f.floats(name)
                    guard v.allSatisfy(\.isFinite) else { throw SafeTensorsError(file: ip, tensor: name, reason: "holds NaN or infinite values") }
                    return v
                }
                return (try tensor("layer\(l).weight", [classes, meta.dModel]), try tensor("layer\(l).bias", [classes]))
            }
            initSource = "from `\(ip)`"
        } else {
            initial = layerNumbers.map { ProbeTrainer.initialProbe(seed: config.seed, layer: $0, classes: classes, dModel: meta.dModel) }
        }
        if streamed && !config.shuffle { log("note: --no-shuffle with streamed data: batches follow the shards' order") }

        config.threads = pool.threadCount
        let trainer = try ProbeTrainer(config: config, source: source, labels: labels, classes: classes, layers: layerNumbers,
                                       train: train, val: val, initial: initial, pool: pool)
        log("training \(layerNumbers.count) probes (layers \(DataLoader.rangeText(layerNumbers))) on \(train.count) rows, validating on \(val.count), \(config.epochs) epochs, \(pool.threadCount) threads")
        let t1 = Date()
        let outcomes = try trainer.run(progress: progress)
        let trainSeconds = Date().timeIntervalSince(t1)

        // Final validation accuracy (from the last epoch when it was validated).
        var finalVal = outcomes.map { $0.epochs.last?.valAccuracy ?? 0 }
        if !val.isEmpty && outcomes.contains(where: { $0.epochs.last?.valAccuracy == nil }) {
            finalVal = try trainer.evaluate(positions: val).accuracy
        }
        let hasBest = outcomes.contains { $0.bestEpoch != nil }
        let bestIndex = outcomes.indices.max { a, b in
            let (x, y) = hasBest ? (outcomes[a].bestAccuracy, outcomes[b].bestAccuracy) : (finalVal[a], finalVal[b])
            return x < y || (x == y && a > b)   // ties: the lowest layer
        }!
        let best = outcomes[bestIndex]
        let reportWeights = (best.bestWeight ?? best.finalWeight, best.bestBias ?? best.finalBias)
        let evalPositions = val.isEmpty ? train : val
        let (outputs, outLabels) = try trainer.outputs(layerIndex: bestIndex, weight: reportWeights.0, bias: reportWeights.1, positions: evalPositions)
        let report = ClassificationReport(outputs: outputs, labels: outLabels, names: meta.labels)

        // Write everything to a temporary directory, then rename it into place.
        let tmp = try temporaryDirectory(for: out)
        var files: [String] = []
        do {
            func path(_ f: String) -> String { files.append(f); return tmp + "/" + f }
            let probeMeta = ProbeSetMetadata(
                labels: meta.labels, layers: layerNumbers, bestLayer: best.layer, dModel: meta.dModel,
                withEmbeddings: meta.withEmbeddings, model: meta.model, quantization: meta.quantization, readout: meta.readout,
                bestEpochs: Dictionary(uniqueKeysWithValues: outcomes.compactMap { o in o.bestEpoch.map { (o.layer, $0) } }))
            let trained = outcomes.map { o in
                ProbeSet.Trained(layer: o.layer, best: o.bestWeight.flatMap { w in o.bestBias.map { (w, $0) } },
                                 final: (o.finalWeight, o.finalBias))
            }
            files += try ProbeSet.write(trained, metadata: probeMeta, into: tmp)
            try writeText(TrainingReport.metricsCSV(outcomes), to: path(ProbeFiles.metrics))
            try writeText(SplitFile(train: train.map { rowsByPosition[$0] }, val: val.map { rowsByPosition[$0] }).json, to: path(ProbeFiles.split))
            try writeText(TrainingReport.accuracySVG(layers: layerNumbers, train: outcomes.map { $0.epochs.last!.trainAccuracy },
                                                     val: hasBest ? outcomes.map(\.bestAccuracy) : finalVal, bestLayer: best.layer),
                          to: path(ProbeFiles.plot))
            let ctx = TrainingReport.Context(shardDirectories: o.shardDirectories, metadata: meta, trainRows: train.count, valRows: val.count,
                                             config: config, streamed: streamed, seconds: trainSeconds, splitSource: splitSource, initSource: initSource)
            try writeText(TrainingReport.summary(ctx, outcomes: outcomes, finalVal: finalVal, bestLayer: best.layer, bestReport: report,
                                                 bestFromCheckpoint: best.bestWeight != nil), to: path(ProbeFiles.summary))
            try install(tmp, at: out, files: files)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        return TrainJobResult(outcomes: outcomes, bestLayer: best.layer, trainRows: train.count, valRows: val.count, streamed: streamed,
                              dataBytes: dataBytes, loadSeconds: loadSeconds, trainSeconds: trainSeconds, files: files)
    }

    static func writeText(_ s: String, to path: String) throws {
        let w = try AtomicFileWriter(path: path)
        try w.write(s)
        try w.commit()
    }

    /// --out must be new, empty, or (with --overwrite) a directory that is replaced whole.
    static func checkOutput(_ out: String, overwrite: Bool) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isDir) {
            guard isDir.boolValue else { throw TrainError("--out \(out) exists and is not a directory") }
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
            if !contents.isEmpty && !overwrite {
                throw TrainError("--out \(out) is not empty; choose a new directory or pass --overwrite to replace its files")
            }
        }
        let parent = ((out as NSString).standardizingPath as NSString).deletingLastPathComponent
        if !parent.isEmpty && !FileManager.default.fileExists(atPath: parent) {
            do { try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) } catch {
                throw TrainError("cannot create the parent of --out \(out): \(error.localizedDescription)")
            }
        }
    }

    /// `.NAME.tmp-PID.d` next to --out (so `Files.removeLeftovers(of:)` recognises the leftovers of killed
    /// runs); leftovers of dead processes are removed first.
    static func temporaryDirectory(for out: String) throws -> String {
        let std = (out as NSString).standardizingPath
        Files.removeLeftovers(of: std)
        let parent = (std as NSString).deletingLastPathComponent
        let tmp = (parent.isEmpty ? "." : parent) + "/.\((std as NSString).lastPathComponent).tmp-\(getpid()).d"
        try? FileManager.default.removeItem(atPath: tmp)
        do { try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: false) } catch {
            throw TrainError("cannot create the temporary output directory \(tmp): \(error.localizedDescription)")
        }
        return tmp
    }

    /// Installs the finished temporary directory as --out, whole: renamed into place when --out is absent or
    /// empty; with --overwrite the two directories are exchanged atomically (renameat2 RENAME_EXCHANGE) and
    /// the old one, now at the temporary name, removed. A kill at any point leaves the old result or the new
    /// one at --out, never a mix, and the temporary name is a leftover the next run removes. Where the file
    /// system cannot exchange, the old directory is renamed away and the new one renamed in (a window of two
    /// renames in which --out is absent).
    static func install(_ tmp: String, at out: String, files: [String]) throws {
        if !FileManager.default.fileExists(atPath: out) || ((try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []).isEmpty {
            try? FileManager.default.removeItem(atPath: out)
            guard rename(tmp, out) == 0 else {
                throw TrainError("cannot rename \(tmp) to \(out): \(String(cString: strerror(errno)))")
            }
            return
        }
        if exchange(tmp, out) {
            try? FileManager.default.removeItem(atPath: tmp)   // the old result
            return
        }
        let away = tmp + ".old"
        guard rename(out, away) == 0 else {
            throw TrainError("cannot move the old \(out) away: \(String(cString: strerror(errno)))")
        }
        guard rename(tmp, out) == 0 else {
            let e = errno
            _ = rename(away, out)
            throw TrainError("cannot rename \(tmp) to \(out): \(String(cString: strerror(e)))")
        }
        try? FileManager.default.removeItem(atPath: away)
    }

    /// renameat2(RENAME_EXCHANGE): swaps two paths atomically (Linux ≥ 3.15; false where unsupported).
    static func exchange(_ a: String, _ b: String) -> Bool {
        typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
        guard let sym = dlsym(nil, "renameat2") else { return false }
        let f = unsafeBitCast(sym, to: RenameAt2.self)
        return f(AT_FDCWD, a, AT_FDCWD, b, 2 /* RENAME_EXCHANGE */) == 0
    }
}

public func formatBytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n), u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

/// Parses sizes like 8G, 512M, 1.5GiB, 1000000 (bytes).
public func parseByteSize(_ s: String) -> Int? {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased()
    let units: [(String, Double)] = [("TIB", 0x1p40), ("GIB", 0x1p30), ("MIB", 0x1p20), ("KIB", 0x1p10), ("TB", 1e12), ("GB", 1e9),
                                     ("MB", 1e6), ("KB", 1e3), ("T", 0x1p40), ("G", 0x1p30), ("M", 0x1p20), ("K", 0x1p10), ("B", 1)]
    for (suffix, mult) in units where t.hasSuffix(suffix) {
        guard let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v >= 0 else { return nil }
        return Int(v * mult)
    }
    return Int(t).flatMap { $0 >= 0 ? $0 : nil }
}
