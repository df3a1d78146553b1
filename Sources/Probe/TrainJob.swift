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
    /// The hook point to train on (one the shards hold); resid_post by default.
    public var hook = ReadoutRecipe.defaultHook
    /// Decoded data up to this many bytes is kept in memory; more is streamed every epoch.
    public var maxMemory: Int
    public var splitPath: String?
    public var initPath: String?
    /// Replace the files of an existing non-empty --out directory.
    public var overwrite = false
    /// Train although a class of the label set has no rows (refused otherwise).
    public var allowEmptyClasses = false
    /// Share of the rows set aside first as a stratified held-out test set (nil: none).
    public var testFraction: Double?
    /// Stratified K-fold cross-validation (scikit-learn's StratifiedKFold, shuffled with --seed); nil: one split.
    public var cvFolds: Int?
    /// Runs with init/shuffle seeds --seed, --seed + 1, … on each split.
    public var seeds = 1
    /// The probes to fit (reference recipe, standardized logistic regression, or both side by side).
    public var recipe = ProbeRecipe.reference
    /// --l2-strength: the logistic regression's C (scikit-learn's); nil: chosen by internal cross-validation.
    public var l2Strength: Double?

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
    /// Every run (seeds × folds; the first is the one whose probes are written) and what they say together.
    public var runs: [TrainRun] = []
    public var layerTrust: [LayerTrust] = []
    public var warnings: [Trust.Warning] = []
    public var testRows = 0
    /// --recipe both: the logistic regression's runs (one per split), reported beside the reference runs.
    public var logisticRuns: [TrainRun] = []
    /// The logistic regression's strength C per layer (first split).
    public var logisticC: [Double] = []
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
        var inv = try ShardInventory(directories: o.shardDirectories)
        try inv.select(hook: o.hook)
        let meta = inv.metadata
        if meta.hooks != [ReadoutRecipe.defaultHook] || (meta.readout?.position ?? "last") != "last" {
            log("reading \(o.hook) (stored: \(meta.hooks.joined(separator: ", "))) at position \(meta.readout?.position ?? "last")")
        }
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
        if let tf = o.testFraction, !(tf > 0 && tf < 1) { throw TrainError("--test-fraction must be in (0, 1), got \(tf)") }
        if let k = o.cvFolds, k < 2 { throw TrainError("--cv must be at least 2 folds, got \(k)") }
        guard o.seeds >= 1 else { throw TrainError("--seeds must be at least 1, got \(o.seeds)") }
        guard config.seed + o.seeds - 1 <= Int(UInt32.max) else { throw TrainError("--seed + --seeds − 1 must be at most 4294967295") }
        if o.splitPath != nil && (o.testFraction != nil || o.cvFolds != nil) {
            throw TrainError("--split gives the rows of every set: it cannot be combined with --test-fraction or --cv (put held-out rows in the file's \"test\" list)")
        }
        // The held-out test set comes first (--test-fraction); the validation split or the folds are made of the rest,
        // as train_test_split / StratifiedKFold on (X_rest, y_rest) would (positions into `rest`, mapped back).
        var test: [Int] = []
        var rest = Array(labels.indices)
        if let tf = o.testFraction {
            let r: (train: [Int], test: [Int])
            do { r = try StratifiedSplit.trainTestSplit(labels: labels.map { Int($0) }, testFraction: tf, seed: UInt32(config.seed), labelNames: meta.labels) }
            catch let e as SplitError { throw SplitError("--test-fraction \(tf) (the held-out test set, split off first; \"validation\" below means the test set): " + e.reason) }
            rest = r.train; test = r.test
        }
        let restLabels = rest.map { Int(labels[$0]) }
        let train: [Int], val: [Int]
        var folds: [[Int]]? = nil
        var splitSource: String
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
            test = try map(s.test ?? [], "test")
            let all = train + val + test
            if Set(all).count != all.count { throw SplitError("\(sp): a row is listed twice (or in more than one of train, val and test)") }
            if train.isEmpty { throw SplitError("\(sp): the train list is empty") }
            splitSource = "split from `\(sp)`"
        } else if let k = o.cvFolds {
            let f = try StratifiedKFold.folds(labels: restLabels, k: k, seed: UInt32(config.seed), labelNames: meta.labels,
                                              warn: { log("warning: \($0)") })
            var inFold = [Int](repeating: 0, count: rest.count)
            for (i, fold) in f.enumerated() { for j in fold { inFold[j] = i } }
            folds = f.map { $0.map { rest[$0] } }
            train = rest.indices.filter { inFold[$0] != 0 }.map { rest[$0] }
            val = folds![0]
            splitSource = "stratified \(k)-fold cross-validation as scikit-learn's StratifiedKFold(n_splits=\(k), shuffle=True, random_state=\(config.seed)); probes and tables below: fold 0"
        } else {
            let r = try StratifiedSplit.trainTestSplit(labels: restLabels, testFraction: config.valFraction,
                                                       seed: UInt32(config.seed), labelNames: meta.labels)
            train = r.train.map { rest[$0] }; val = r.test.map { rest[$0] }
            splitSource = "stratified \(Int((1 - config.valFraction) * 100))/\(Int((config.valFraction * 100).rounded())) split as scikit-learn's train_test_split(random_state=\(config.seed))"
        }
        if !test.isEmpty {
            splitSource += "; \(test.count) rows held out first as a test set" + (o.testFraction.map { " (stratified, --test-fraction \($0))" } ?? " (the split file's test list)")
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
        // The runs: every fold (or the one split) × every seed. Run 0 (fold 0, --seed) is the reference run: its
        // probes, metrics and report are written; the others add to the statistics of layer_summary.csv.
        var plans: [(fold: Int?, seedIndex: Int, train: [Int], val: [Int])] = []
        var trainSeconds = 0.0
        if let folds {
            var foldOf = [Int: Int]()
            for (i, f) in folds.enumerated() { for p in f { foldOf[p] = i } }
            for (i, f) in folds.enumerated() {
                let tr = i == 0 ? train : rest.filter { foldOf[$0] != i }
                for sIdx in 0..<o.seeds { plans.append((i, sIdx, tr, f)) }
            }
        } else {
            for sIdx in 0..<o.seeds { plans.append((nil, sIdx, train, val)) }
        }
        if plans.count > 1 {
            log("\(plans.count) runs (\(folds.map { "\($0.count) folds" } ?? "one split") × \(o.seeds) seed(s)) " + (streamed
                ? "in one pass over the shards per epoch (streamed: shared batches, each run training on its own rows of them)"
                : "on the data decoded once, shared by every run"))
            if o.seeds > 1 && !config.shuffle && o.initPath != nil { log("warning: --seeds \(o.seeds) with --init and --no-shuffle: nothing depends on the seed, the runs are identical") }
        }
        if o.recipe != .reference {
            if streamed { throw TrainError("--recipe \(o.recipe.rawValue) needs the activations in memory, but they take \(formatBytes(dataBytes)) > --max-memory \(formatBytes(o.maxMemory)); raise --max-memory or train fewer --layers") }
            if let c = o.l2Strength, !(c > 0 && c.isFinite) { throw TrainError("--l2-strength must be a positive number (scikit-learn's C), got \(c)") }
        }
        // --recipe logistic|both: per split (seeds do not matter: the fit is deterministic), every layer's
        // standardized multinomial logistic regression, as LayerOutcomes of one pseudo-epoch.
        var logisticC = [Double](repeating: 0, count: layerNumbers.count)
        func logisticOutcomes(_ ps: [(fold: Int?, seedIndex: Int, train: [Int], val: [Int])]) throws -> [[LayerOutcome]] {
            guard let resident = source as? ResidentActivations else { throw TrainError("internal: logistic regression without resident data") }
            var result = ps.map { _ in [LayerOutcome]() }
            let y = labels.map { Int($0) }
            let d = meta.dModel
            var row = [Float](repeating: 0, count: d)
            for (li, layer) in layerNumbers.enumerated() {
                var x = [Double](repeating: 0, count: labels.count * d)
                for p in 0..<labels.count {
                    row.withUnsafeMutableBufferPointer { r in type.convert(resident.row(position: p) + li * d * type.size, r.baseAddress!, d) }
                    for j in 0..<d { x[p * d + j] = Double(row[j]) }
                }
                for (pi, plan) in ps.enumerated() {
                    let fit: LogisticProbe.Fit
                    if let c = o.l2Strength {
                        fit = LogisticProbe.fit(x: x, y: y, d: d, classes: classes, rows: plan.train, c: c).fit
                    } else {
                        fit = try LogisticProbe.crossValidated(x: x, y: y, d: d, classes: classes, rows: plan.train, seed: UInt32(config.seed)).fit
                    }
                    if pi == 0 { logisticC[li] = fit.c }
                    if !fit.converged { log("warning: logistic regression of layer \(layer) (C \(fit.c)) did not converge in \(fit.iterations) iterations") }
                    let trainAcc = LogisticProbe.accuracy(fit, x: x, y: y, d: d, classes: classes, rows: plan.train)
                    let valAcc: Double? = plan.val.isEmpty ? nil : LogisticProbe.accuracy(fit, x: x, y: y, d: d, classes: classes, rows: plan.val)
                    var oc = LayerOutcome(layer: layer)
                    oc.finalWeight = fit.weight.map { Float($0) }
                    oc.finalBias = fit.bias.map { Float($0) }
                    if let v = valAcc, v > 0 { oc.bestWeight = oc.finalWeight; oc.bestBias = oc.finalBias; oc.bestEpoch = 1; oc.bestAccuracy = v }
                    oc.epochs = [EpochRecord(epoch: 1, trainLoss: fit.objective, trainCorrect: Int((trainAcc * Double(plan.train.count)).rounded()),
                                             trainTotal: plan.train.count, valAccuracy: valAcc, valLoss: nil, bestAccuracy: oc.bestAccuracy,
                                             isBest: oc.bestEpoch != nil, lr: 0)]
                    result[pi].append(oc)
                }
            }
            return result
        }
        var logisticFirst: [[LayerOutcome]]? = nil
        if o.recipe == .logistic {
            if o.seeds > 1 { log("note: --seeds \(o.seeds) with --recipe logistic: the fit is deterministic, one run per split") }
            plans = plans.filter { $0.seedIndex == 0 }
            log("fitting \(layerNumbers.count) logistic regressions (layers \(DataLoader.rangeText(layerNumbers))) on \(train.count) rows, "
                + (o.l2Strength.map { "C \($0)" } ?? "C by 5-fold cross-validation over 1e-4…1e4") + (plans.count > 1 ? ", \(plans.count) splits" : ""))
            let t1 = Date()
            logisticFirst = try logisticOutcomes(plans)
            trainSeconds += Date().timeIntervalSince(t1)
        }
        var runs: [TrainRun] = []
        var trainer: ProbeTrainer! = nil
        var outcomes: [LayerOutcome] = []
        var finalVal: [Double] = []
        func makeTrainer(_ plan: (fold: Int?, seedIndex: Int, train: [Int], val: [Int])) throws -> ProbeTrainer {
            var c = config
            c.seed = config.seed + plan.seedIndex
            let start = plan.seedIndex == 0 || o.initPath != nil ? initial
                : layerNumbers.map { ProbeTrainer.initialProbe(seed: c.seed, layer: $0, classes: classes, dModel: meta.dModel) }
            return try ProbeTrainer(config: c, source: source, labels: labels, classes: classes, layers: layerNumbers,
                                    train: plan.train, val: plan.val, initial: start, pool: pool)
        }
        // Streamed data: every run from one pass over the shards per epoch (all runs' probes live at once).
        var shared: (trainers: [ProbeTrainer], outcomes: [[LayerOutcome]])? = nil
        if streamed && plans.count > 1 && o.recipe != .logistic {
            let ts = try plans.map(makeTrainer)
            log("training \(plans.count) × \(layerNumbers.count) probes (layers \(DataLoader.rangeText(layerNumbers))), \(config.epochs) epochs, \(pool.threadCount) threads")
            let t1 = Date()
            shared = (ts, try ProbeTrainer.runShared(ts, seed: config.seed, shuffle: config.shuffle, progress: progress))
            trainSeconds = Date().timeIntervalSince(t1)
        }
        /// A run's validation and test accuracies and class counts (weights dropped but for the first run's).
        func summarize(_ plan: (fold: Int?, seedIndex: Int, train: [Int], val: [Int]), _ t: ProbeTrainer, _ outcomes: [LayerOutcome]) throws -> (run: TrainRun, finalVal: [Double]) {
            var oc = outcomes
            // Final validation accuracy (from the last epoch when it was validated).
            var fv = oc.map { $0.epochs.last?.valAccuracy ?? 0 }
            if !plan.val.isEmpty && oc.contains(where: { $0.epochs.last?.valAccuracy == nil }) {
                fv = try t.evaluate(positions: plan.val).accuracy
            }
            var testAccuracy: [Double]? = nil
            if !test.isEmpty {
                // Every layer's reported probe (best, else final) on the test rows, in one pass.
                let reported = oc.map { ($0.bestWeight ?? $0.finalWeight, $0.bestBias ?? $0.finalBias) }
                let e = try ProbeTrainer(config: t.config, source: source, labels: labels, classes: classes, layers: layerNumbers,
                                         train: plan.train, val: [], initial: reported, pool: pool)
                testAccuracy = try e.evaluate(positions: test).accuracy
            }
            var valCounts = [Int](repeating: 0, count: classes), trainCounts = [Int](repeating: 0, count: classes)
            for p in plan.val { valCounts[Int(labels[p])] += 1 }
            for p in plan.train { trainCounts[Int(labels[p])] += 1 }
            let keep = runs.isEmpty
            if !keep { for i in oc.indices { oc[i].bestWeight = nil; oc[i].bestBias = nil; oc[i].finalWeight = []; oc[i].finalBias = [] } }
            return (TrainRun(seedIndex: plan.seedIndex, fold: plan.fold, outcomes: oc,
                             valAccuracy: zip(oc, fv).map { $0.bestEpoch != nil ? $0.bestAccuracy : $1 }, finalValAccuracy: fv,
                             valRows: plan.val.count, testAccuracy: testAccuracy, valClassCounts: valCounts,
                             trainMajorityShare: Double(trainCounts.max() ?? 0) / Double(max(1, plan.train.count))), fv)
        }
        for (ri, plan) in plans.enumerated() {
            let t: ProbeTrainer
            var oc: [LayerOutcome]
            if let lo = logisticFirst {
                oc = lo[ri]
                t = try ProbeTrainer(config: config, source: source, labels: labels, classes: classes, layers: layerNumbers,
                                     train: plan.train, val: plan.val, initial: oc.map { ($0.finalWeight, $0.finalBias) }, pool: pool)
            } else if let shared {
                t = shared.trainers[ri]; oc = shared.outcomes[ri]
            } else {
                t = try makeTrainer(plan)
                if ri == 0 {
                    log("training \(layerNumbers.count) probes (layers \(DataLoader.rangeText(layerNumbers))) on \(plan.train.count) rows, validating on \(plan.val.count), \(config.epochs) epochs, \(pool.threadCount) threads")
                } else {
                    log("run \(ri + 1)/\(plans.count): \(plan.fold.map { "fold \($0), " } ?? "")seed \(t.config.seed), \(plan.train.count) training and \(plan.val.count) validation rows")
                }
                let t1 = Date()
                oc = try t.run(progress: progress)
                trainSeconds += Date().timeIntervalSince(t1)
            }
            let (run, fv) = try summarize(plan, t, oc)
            if ri == 0 {
                trainer = t; outcomes = oc; finalVal = fv
            }
            runs.append(run)
        }
        // --recipe both: the logistic regression of every split, reported beside the reference recipe.
        var logisticRuns: [TrainRun] = []
        if o.recipe == .both {
            let ps = plans.filter { $0.seedIndex == 0 }
            log("fitting \(layerNumbers.count) logistic regressions beside the reference probes" + (o.l2Strength.map { " (C \($0))" } ?? " (C by 5-fold cross-validation over 1e-4…1e4)"))
            let t1 = Date()
            let lo = try logisticOutcomes(ps)
            trainSeconds += Date().timeIntervalSince(t1)
            for (pi, plan) in ps.enumerated() {
                let t = try ProbeTrainer(config: config, source: source, labels: labels, classes: classes, layers: layerNumbers,
                                         train: plan.train, val: plan.val, initial: lo[pi].map { ($0.finalWeight, $0.finalBias) }, pool: pool)
                logisticRuns.append(try summarize(plan, t, lo[pi]).run)
            }
        }

        let hasBest = outcomes.contains { $0.bestEpoch != nil }
        var bestIndex = outcomes.indices.max { a, b in
            let (x, y) = hasBest ? (outcomes[a].bestAccuracy, outcomes[b].bestAccuracy) : (finalVal[a], finalVal[b])
            return x < y || (x == y && a > b)   // ties: the lowest layer
        }!
        let trust = Trust.layers(runs, testRows: test.count)
        if runs.count > 1 {
            // Several runs: the layer with the best mean validation accuracy.
            bestIndex = trust.indices.max { a, b in trust[a].mean < trust[b].mean || (trust[a].mean == trust[b].mean && a > b) }!
        }
        let best = outcomes[bestIndex]
        let reportWeights = (best.bestWeight ?? best.finalWeight, best.bestBias ?? best.finalBias)
        let evalPositions = val.isEmpty ? train : val
        let (outputs, outLabels) = try trainer.outputs(layerIndex: bestIndex, weight: reportWeights.0, bias: reportWeights.1, positions: evalPositions)
        let report = ClassificationReport(outputs: outputs, labels: outLabels, names: meta.labels)

        // How far to trust the numbers: intervals, baselines, spread over runs, warnings (also on stderr).
        let testMean: [Double]? = test.isEmpty ? nil : layerNumbers.indices.map { li in Trust.meanSD(runs.compactMap { $0.testAccuracy?[li] }).mean }
        let warnings = Trust.warnings(runs, labels: meta.labels, startLR: config.learningRate, bestLayer: best.layer,
                                      testAccuracy: testMean.map { (runs[0].testAccuracy![bestIndex], $0[bestIndex]) }, hasCV: folds != nil)
        for w in warnings { log((w.kind == .optimisticBest ? "note: " : "warning: ") + "\(w.kind.rawValue): " + w.text) }
        let pooledVal = plans.filter { $0.seedIndex == 0 }.flatMap(\.val)
        let majority = Trust.majorityBaseline(trainLabels: train.map { labels[$0] }, valLabels: pooledVal.map { labels[$0] }, classes: classes)
        var trustText = "Each layer's validation accuracy is that of its reported probe (the best checkpoint, else the final weights), with its 95% Wilson score interval"
        if let folds {
            trustText += "; with \(folds.count)-fold cross-validation every row outside the test set is validated exactly once, so it pools the \(folds.count) folds"
            trustText += o.seeds > 1 ? " of the first seed" : ""
        }
        if runs.count > 1 {
            trustText += ". Mean ± sd (sample standard deviation) and min–max are over the \(runs.count) runs"
            trustText += " (\(folds.map { "\($0.count) folds" } ?? "the same split")\(o.seeds > 1 ? " × \(o.seeds) init/shuffle seeds \(config.seed)…\(config.seed + o.seeds - 1)" : ""))"
            trustText += "; the best layer is the one with the best mean"
        }
        trustText += "."
        let logisticTrust: [LayerTrust]? = logisticRuns.isEmpty ? nil : Trust.layers(logisticRuns, testRows: test.count)
        let trustSection = Trust.section(trust, warnings: warnings, runs: runs, classes: classes, majority: (meta.labels[majority.classId], majority.accuracy),
                                         bestLayer: best.layer, testRows: test.count, testMean: testMean, description: trustText)
            + (logisticTrust.map { Trust.sideBySide(reference: trust, logistic: $0, c: logisticC, l2Given: o.l2Strength != nil) } ?? "")

        // Write everything to a temporary directory, then rename it into place.
        let tmp = try temporaryDirectory(for: out)
        var files: [String] = []
        do {
            func path(_ f: String) -> String { files.append(f); return tmp + "/" + f }
            let probeMeta = ProbeSetMetadata(
                labels: meta.labels, layers: layerNumbers, bestLayer: best.layer, dModel: meta.dModel,
                withEmbeddings: meta.withEmbeddings, model: meta.model, quantization: meta.quantization, readout: meta.readout?.reading(hook: o.hook),
                output: o.recipe == .logistic ? .softmax : .sigmoid,
                bestEpochs: Dictionary(uniqueKeysWithValues: outcomes.compactMap { o in o.bestEpoch.map { (o.layer, $0) } }))
            let trained = outcomes.map { o in
                ProbeSet.Trained(layer: o.layer, best: o.bestWeight.flatMap { w in o.bestBias.map { (w, $0) } },
                                 final: (o.finalWeight, o.finalBias))
            }
            files += try ProbeSet.write(trained, metadata: probeMeta, into: tmp)
            try writeText(TrainingReport.metricsCSV(outcomes), to: path(ProbeFiles.metrics))
            try writeText(SplitFile(train: train.map { rowsByPosition[$0] }, val: val.map { rowsByPosition[$0] },
                                    test: test.isEmpty ? nil : test.map { rowsByPosition[$0] },
                                    folds: folds?.map { $0.map { rowsByPosition[$0] } }).json, to: path(ProbeFiles.split))
            try writeText(TrainingReport.accuracySVG(layers: layerNumbers, train: outcomes.map { $0.epochs.last!.trainAccuracy },
                                                     val: runs.count > 1 ? trust.map(\.mean) : hasBest ? outcomes.map(\.bestAccuracy) : finalVal,
                                                     bestLayer: best.layer, spread: runs.count > 1 ? trust.map(\.sd) : nil,
                                                     valName: runs.count > 1 ? "validation (mean ± sd, \(runs.count) runs)" : "validation (best)",
                                                     baselines: [("majority class", majority.accuracy), ("chance", 1 / Double(classes))],
                                                     test: runs[0].testAccuracy.map { (best.layer, $0[bestIndex]) }),
                          to: path(ProbeFiles.plot))
            try writeText(Trust.layerSummaryCSV(trust, hasTest: !test.isEmpty, hasSpread: runs.count > 1,
                                                l2Strength: o.recipe == .logistic ? logisticC : nil,
                                                logistic: logisticTrust.map { ($0, logisticC) }), to: path(ProbeFiles.layerSummary))
            if runs.count > 1 { try writeText(Trust.runsCSV(runs, testRows: test.count), to: path(folds != nil ? ProbeFiles.cv : ProbeFiles.seeds)) }
            var ctx = TrainingReport.Context(shardDirectories: o.shardDirectories, metadata: meta, trainRows: train.count, valRows: val.count,
                                             config: config, streamed: streamed, seconds: trainSeconds, splitSource: splitSource, initSource: initSource,
                                             recipeText: o.recipe == .logistic ? LogisticProbe.description(c: o.l2Strength, seed: config.seed) : nil)
            ctx.hook = o.hook
            try writeText(TrainingReport.summary(ctx, outcomes: outcomes, finalVal: finalVal, bestLayer: best.layer, bestReport: report,
                                                 bestFromCheckpoint: best.bestWeight != nil, trust: trustSection), to: path(ProbeFiles.summary))
            try install(tmp, at: out, files: files)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        return TrainJobResult(outcomes: outcomes, bestLayer: best.layer, trainRows: train.count, valRows: val.count, streamed: streamed,
                              dataBytes: dataBytes, loadSeconds: loadSeconds, trainSeconds: trainSeconds, files: files,
                              runs: runs, layerTrust: trust, warnings: warnings, testRows: test.count,
                              logisticRuns: logisticRuns, logisticC: o.recipe == .reference ? [] : logisticC)
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
