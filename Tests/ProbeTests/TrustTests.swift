import Foundation
import Probe
import Quant
import Formats
import Testing

/// Synthetic shards: `layers` layers of `dModel` values per row; in layer l the class signal has strength
/// `signal[l]` (0: pure noise, or all zeros when `noise` is 0) on the class's own coordinate.
func trustData(_ dir: String, labels: [Int], classes: Int, layers: Int, dModel: Int, signal: [Float], noise: Float = 1,
               seed: UInt64 = 7) throws -> String {
    var rng = ProbeRNG(seed: seed, stream: 99)
    var values = [Float]()
    values.reserveCapacity(labels.count * layers * dModel)
    for y in labels {
        for l in 0..<layers {
            for j in 0..<dModel { values.append(noise * Float(rng.normal()) + (j == y ? signal[l] : 0)) }
        }
    }
    let shards = dir + "/shards"
    try writeShards(shards, values: values, labels: labels, layers: layers, dModel: dModel,
                    labelNames: (0..<classes).map { "c\($0)" }, rowsPerShard: 64)
    return shards
}

/// Balanced labels 0..<classes, interleaved.
func balancedLabels(_ n: Int, classes: Int) -> [Int] { (0..<n).map { $0 % classes } }

func readCSV(_ path: String) throws -> [[String]] {
    try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
}

/// Runs a job and collects its log lines (what the CLI prints on stderr).
func runLogged(_ o: TrainJobOptions) throws -> (TrainJobResult, [String]) {
    final class Lines: @unchecked Sendable { var v: [String] = [] }
    let lines = Lines()
    let r = try TrainJob.run(o, log: { lines.v.append($0) })
    return (r, lines.v)
}

@Suite struct TrustTests {
    @Test("Wilson interval: a hand-computed case and the edges")
    func wilson() {
        // 81 of 100, z = 1.959964: z²/n = 0.0384146, center = (0.81 + 0.0192073) / 1.0384146 = 0.7985339,
        // half = z / 1.0384146 · √(0.81·0.19/100 + 3.8414588/40000) = 1.8874580 · 0.0404356 = 0.0763205.
        let a = Trust.wilson(successes: 81, trials: 100)
        #expect(abs(a.low - 0.7222115) < 1e-6 && abs(a.high - 0.8748525) < 1e-6, "\(a)")
        // 0 of 10: [0, z²/(n + z²)] = [0, 3.8414588/13.8414588].
        let b = Trust.wilson(successes: 0, trials: 10)
        #expect(b.low == 0 && abs(b.high - 0.2775328) < 1e-6, "\(b)")
        let c = Trust.wilson(successes: 10, trials: 10)
        #expect(abs(c.low - (1 - 0.2775328)) < 1e-6 && c.high == 1, "\(c)")
        let none = Trust.wilson(successes: 0, trials: 0)
        #expect(none.low == 0 && none.high == 1)
        let (m, sd) = Trust.meanSD([0.5, 0.7, 0.9])
        #expect(abs(m - 0.7) < 1e-12 && abs(sd - 0.2) < 1e-12)
        let one = Trust.meanSD([0.4])
        #expect(one.mean == 0.4 && one.sd == 0)
        let maj = Trust.majorityBaseline(trainLabels: [0, 1, 1, 2, 1], valLabels: [1, 0, 1, 2], classes: 3)
        #expect(maj.classId == 1 && maj.accuracy == 0.5)
    }

    @Test("StratifiedKFold(n_splits=K, shuffle=True, random_state=12345), fold for fold against scikit-learn")
    func kfold() throws {
        let j = try ProbeFixtures.json("cv_folds.json")
        let cases = j["cases"] as! [[String: Any]]
        #expect(cases.count >= 10)
        for c in cases {
            let labels = c["labels"] as! [Int], k = c["k"] as! Int
            let folds = try StratifiedKFold.folds(labels: labels, k: k, seed: 12345)
            #expect(folds == c["folds"] as! [[Int]], "N=\(labels.count) K=\(k)")
        }
        // More folds than the rows of every class: refused as scikit-learn does; fewer than some: a warning.
        let e = #expect(throws: SplitError.self) { _ = try StratifiedKFold.folds(labels: [0, 0, 1, 1, 2, 2], k: 3) }
        #expect(e?.reason.contains("more than the rows of every class") == true, "\(e?.reason ?? "")")
        var warned: [String] = []
        _ = try StratifiedKFold.folds(labels: [0, 0, 0, 0, 1, 1], k: 3, labelNames: ["a", "b"], warn: { warned.append($0) })
        #expect(warned.count == 1 && warned[0].contains("class 'b' has 2 rows"), "\(warned)")
    }

    @Test("--test-fraction: the test set is scikit-learn's, set aside first; the split of the rest too; test accuracy reported")
    func heldOut() throws {
        let h = try ProbeFixtures.json("cv_folds.json")["held_out"] as! [String: Any]
        let labels = h["labels"] as! [Int]
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 4, layers: 2, dModel: 8, signal: [0, 3])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 20
        o.config.learningRate = 0.01
        o.testFraction = 0.2
        let (r, log) = try runLogged(o)
        let s = try SplitFile.read(path: dir + "/out/split.json")
        let rest = h["rest"] as! [Int]
        #expect(s.test == h["test"] as? [Int])
        #expect(s.train == (h["train_of_rest"] as! [Int]).map { rest[$0] })
        #expect(s.val == (h["val_of_rest"] as! [Int]).map { rest[$0] })
        #expect(r.testRows == 60 && r.trainRows + r.valRows == 240)
        let csv = try readCSV(dir + "/out/layer_summary.csv")
        #expect(csv[0] == ["layer", "val_accuracy", "ci_low", "ci_high", "val_rows", "test_accuracy", "test_ci_low", "test_ci_high"])
        #expect(csv.count == 3)
        // layer 1 carries the signal: it is the best layer, and its test accuracy is well above chance
        #expect(r.bestLayer == 1)
        let test1 = Double(csv[2][5])!
        #expect(test1 > 0.6 && Double(csv[2][6])! < test1 && test1 < Double(csv[2][7])!)
        let note = r.warnings.first { $0.kind == .optimisticBest }
        #expect(note?.text.contains("held-out test accuracy of layer 1") == true, "\(r.warnings)")
        #expect(log.contains { $0.hasPrefix("note: optimistic-best: the best layer (1)") }, "\(log)")
        let summary = try String(contentsOfFile: dir + "/out/probe_training_summary.md", encoding: .utf8)
        #expect(summary.contains("test acc") && summary.contains("60 rows held out first"))
        // A test set smaller than the classes is refused, naming --test-fraction.
        var tiny = o
        tiny.testFraction = 0.01
        tiny.outDirectory = dir + "/tiny"
        let t = #expect(throws: SplitError.self) { _ = try TrainJob.run(tiny) }
        #expect(t?.reason.hasPrefix("--test-fraction 0.01 (the held-out test set") == true && t?.reason.contains("smaller than the 4 classes") == true, "\(t?.reason ?? "")")
        // --split and --test-fraction together are refused.
        o.splitPath = dir + "/out/split.json"
        o.outDirectory = dir + "/out2"
        let e = #expect(throws: TrainError.self) { _ = try TrainJob.run(o) }
        #expect(e?.reason.contains("cannot be combined with --test-fraction") == true)
        // The written split (with its test list) is reusable: the same sets, the test rows kept out of training.
        o.testFraction = nil
        let r2 = try TrainJob.run(o)
        #expect(r2.testRows == 60 && r2.outcomes.map(\.finalWeight) == r.outcomes.map(\.finalWeight))
    }

    @Test("--cv: scikit-learn's folds in split.json, cv.csv per fold, mean ± sd and a pooled interval in layer_summary.csv")
    func crossValidation() throws {
        let c = (try ProbeFixtures.json("cv_folds.json")["cases"] as! [[String: Any]]).first { ($0["labels"] as! [Int]).count == 280 }!
        let labels = c["labels"] as! [Int]
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 7, layers: 2, dModel: 8, signal: [0, 4])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 10
        o.config.learningRate = 0.01
        o.cvFolds = 5
        let (r, _) = try runLogged(o)
        let s = try SplitFile.read(path: dir + "/out/split.json")
        #expect(s.folds == c["folds"] as? [[Int]])
        #expect(s.val == s.folds?[0] && Set(s.train).union(s.val).count == 280 && Set(s.train).isDisjoint(with: s.val))
        #expect(r.runs.count == 5 && r.runs.map(\.fold) == [0, 1, 2, 3, 4])
        let cv = try readCSV(dir + "/out/cv.csv")
        #expect(cv[0] == ["layer", "fold", "val_accuracy", "seed", "val_rows"])
        #expect(cv.count == 1 + 2 * 5)
        let summary = try readCSV(dir + "/out/layer_summary.csv")
        #expect(summary[0] == ["layer", "val_accuracy", "ci_low", "ci_high", "val_rows", "mean", "sd", "n", "min", "max"])
        for (li, row) in summary.dropFirst().enumerated() {
            let folds = cv.dropFirst().filter { $0[0] == "\(li)" }.map { Double($0[2])! }
            let (m, sd) = Trust.meanSD(folds)
            #expect(abs(Double(row[5])! - m) < 1e-5 && abs(Double(row[6])! - sd) < 1e-5 && row[7] == "5")
            // every row validated once: the pooled accuracy is over all 280 rows
            #expect(row[4] == "280")
            let pooled = zip(folds, r.runs.map(\.valRows)).reduce(0.0) { $0 + ($1.0 * Double($1.1)).rounded() } / 280
            #expect(abs(Double(row[1])! - pooled) < 1e-6)
        }
        #expect(r.bestLayer == 1)
        // Run 0 is fold 0 of a plain run: the probes written are those of training on fold 0's complement.
        let svg = try String(contentsOfFile: dir + "/out/accuracy_by_layer.svg", encoding: .utf8)
        #expect(svg.contains("mean ± sd, 5 runs") && svg.contains("majority class") && svg.contains("chance"))
    }

    @Test("--seeds: the first run is the plain run; the others differ; mean ± sd over seeds")
    func seeds() throws {
        let labels = balancedLabels(120, classes: 3)
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 3, layers: 2, dModel: 8, signal: [0.5, 2])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/plain")
        o.config.epochs = 10
        let plain = try TrainJob.run(o)
        o.outDirectory = dir + "/out"
        o.seeds = 3
        let r = try TrainJob.run(o)
        #expect(r.runs.count == 3 && r.runs.map(\.seedIndex) == [0, 1, 2])
        #expect(r.outcomes.map(\.finalWeight) == plain.outcomes.map(\.finalWeight))
        #expect(r.runs[0].valAccuracy == plain.runs[0].valAccuracy)
        #expect(r.runs[1].outcomes.map { $0.epochs.map(\.trainLoss) } != r.runs[0].outcomes.map { $0.epochs.map(\.trainLoss) })
        let per = try readCSV(dir + "/out/seeds.csv")
        #expect(per.count == 1 + 2 * 3)
        for li in 0..<2 {
            let (m, sd) = Trust.meanSD(r.runs.map { $0.valAccuracy[li] })
            #expect(abs(r.layerTrust[li].mean - m) < 1e-12 && abs(r.layerTrust[li].sd - sd) < 1e-12 && r.layerTrust[li].n == 3)
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/plain")
        #expect(files.contains("layer_summary.csv") && !files.contains("seeds.csv") && !files.contains("cv.csv"))
    }

    @Test("--seeds × --cv runs share the data decoded once: the shards can vanish once training has started")
    func onePass() throws {
        let labels = balancedLabels(90, classes: 3)
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 3, layers: 2, dModel: 8, signal: [0, 2])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 3
        o.cvFolds = 3
        o.seeds = 2
        final class Flag: @unchecked Sendable { var removed = false }
        let flag = Flag()
        let r = try TrainJob.run(o, progress: { _ in
            if !flag.removed { try? FileManager.default.removeItem(atPath: shards); flag.removed = true }
        })
        #expect(flag.removed && !FileManager.default.fileExists(atPath: shards))
        #expect(r.runs.count == 6 && r.runs.map(\.fold) == [0, 0, 1, 1, 2, 2] && r.runs.map(\.seedIndex) == [0, 1, 0, 1, 0, 1])
        #expect(r.layerTrust.allSatisfy { $0.n == 6 && $0.valRows == 90 })
    }

    @Test("warnings: collapsed learning rate and underfit (no signal), each on stderr and in the summary")
    func lrCollapseAndUnderfit() throws {
        // All-zero activations of two balanced classes in alternating order: the loss never improves after the
        // first epoch, so ReduceLROnPlateau (patience 0, factor 0.1) divides the rate every epoch; argmax ties
        // pick class 0, half the rows.
        let labels = balancedLabels(100, classes: 2)
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 2, layers: 1, dModel: 4, signal: [0], noise: 0)
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 10
        o.config.plateauFactor = 0.1
        o.config.shuffle = false
        o.config.batchSize = 20
        let (r, log) = try runLogged(o)
        let kinds = Set(r.warnings.map(\.kind))
        #expect(kinds.contains(.lrCollapsed) && kinds.contains(.underfit), "\(r.warnings)")
        #expect(!kinds.contains(.overfit) && !kinds.contains(.smallClass))
        #expect(log.contains { $0.hasPrefix("warning: lr-collapsed: the learning rate fell below 0.001 × its start (0.001) before the last validation") }, "\(log)")
        #expect(log.contains { $0.hasPrefix("warning: underfit: the final training accuracy of layer 0 (lowest 0.500)") }, "\(log)")
        let summary = try String(contentsOfFile: dir + "/out/probe_training_summary.md", encoding: .utf8)
        #expect(summary.contains("**lr-collapsed**") && summary.contains("**underfit**"))
        // Baselines: majority 0.5 and chance 0.5 on 20 validation rows.
        #expect(summary.contains("majority class (`c0`, the most frequent training class) **0.5000**") && summary.contains("uniform chance **0.5000**"))
    }

    @Test("warnings: none of lr/underfit/overfit/small-class on clean, well-separated data")
    func cleanData() throws {
        let labels = balancedLabels(300, classes: 3)
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 3, layers: 1, dModel: 8, signal: [4])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 20
        o.config.learningRate = 0.01
        let (r, _) = try runLogged(o)
        #expect(r.warnings.map(\.kind) == [.optimisticBest], "\(r.warnings)")
        #expect(r.warnings[0].text.contains("set rows aside with --test-fraction"))
        let t = r.layerTrust[0]
        #expect(t.valRows == 60 && t.ciLow < t.valAccuracy && t.valAccuracy <= t.ciHigh)
        let w = Trust.wilson(successes: Int((t.valAccuracy * 60).rounded()), trials: 60)
        #expect(t.ciLow == w.low && t.ciHigh == w.high)
    }

    @Test("warnings: overfit on random labels in many dimensions")
    func overfit() throws {
        let labels = balancedLabels(60, classes: 2)
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 2, layers: 1, dModel: 128, signal: [0])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 60
        o.config.learningRate = 0.02
        o.config.adam.weightDecay = 0
        o.config.plateauPatience = 100
        let (r, log) = try runLogged(o)
        #expect(r.outcomes[0].epochs.last!.trainAccuracy == 1)
        #expect(r.warnings.contains { $0.kind == .overfit }, "\(r.warnings)")
        #expect(log.contains { $0.hasPrefix("warning: overfit: the final training accuracy of layer 0 exceeds the final validation accuracy by more than 0.2") }, "\(log)")
    }

    @Test("warnings: a class with fewer than 10 validation rows")
    func smallClass() throws {
        let labels = (0..<220).map { $0 < 20 ? 2 : $0 % 2 }
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 3, layers: 1, dModel: 8, signal: [4])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config.epochs = 20
        o.config.learningRate = 0.01
        let (r, log) = try runLogged(o)
        #expect(!r.warnings.contains { $0.kind == .underfit })
        let w = r.warnings.first { $0.kind == .smallClass }
        #expect(w?.text.contains("'c2' 4") == true, "\(r.warnings)")
        #expect(!(w?.text.contains("'c0'") ?? true))
        #expect(log.contains { $0.hasPrefix("warning: small-class: classes with fewer than 10 validation rows: 'c2' 4") }, "\(log)")
    }

    @Test("--early-stopping: a layer stops after N validations without improvement, the others go on; off by default")
    func earlyStopping() throws {
        // layer 0 is all zeros (its validation accuracy never changes), layer 1 learns a weak signal.
        let labels = balancedLabels(200, classes: 2)
        let dir = scratchDirectory()
        var rng = ProbeRNG(seed: 3, stream: 5)
        var values = [Float]()
        for y in labels {
            for _ in 0..<4 { values.append(0) }
            for j in 0..<4 { values.append(Float(rng.normal()) + (j == y ? 1.5 : 0)) }
        }
        try writeShards(dir + "/shards", values: values, labels: labels, layers: 2, dModel: 4, labelNames: ["a", "b"])
        var o = TrainJobOptions(shardDirectories: [dir + "/shards"], outDirectory: dir + "/off")
        o.config.epochs = 30
        o.config.valEvery = 1
        o.config.learningRate = 3e-4
        o.config.plateauPatience = 100
        let off = try TrainJob.run(o)
        #expect(off.outcomes.allSatisfy { $0.epochs.count == 30 && $0.stoppedEpoch == nil })
        o.outDirectory = dir + "/on"
        o.config.earlyStopping = 3
        let on = try TrainJob.run(o)
        // The stop each layer should make, from the validations of the run without early stopping (up to its
        // stop a layer trains exactly as without it): the third validation in a row without a new best.
        for (a, b) in zip(off.outcomes, on.outcomes) {
            var best = 0.0, since = 0, expected: Int? = nil
            for e in a.epochs {
                if e.valAccuracy! > best { best = e.valAccuracy!; since = 0 } else { since += 1 }
                if since == 3 && e.epoch < 30 { expected = e.epoch; break }
            }
            #expect(b.stoppedEpoch == expected && b.epochs.count == expected ?? 30, "layer \(b.layer)")
            #expect(b.epochs.map(\.trainLoss) == a.epochs.prefix(b.epochs.count).map(\.trainLoss))
        }
        // layer 0 never improves on its first validation: stopped after epoch 4; layer 1 goes on learning
        #expect(on.outcomes[0].stoppedEpoch == 4)
        #expect(on.outcomes[1].epochs.count > 4)
        let csv = try readCSV(dir + "/on/probe_training_metrics.csv")
        #expect(csv.dropFirst().filter { $0[0] == "0" }.count == 4)
        var bad = TrainConfig()
        bad.earlyStopping = 0
        #expect(throws: TrainError("--early-stopping must be at least 1 (validations without improvement)")) { try bad.validate() }
    }

    @Test("streamed data: every run from one pass over the shards per epoch; a run whose rows are the union trains as alone")
    func streamedRuns() throws {
        let labels = balancedLabels(90, classes: 3)
        let dir = scratchDirectory()
        let shards = try trustData(dir, labels: labels, classes: 3, layers: 2, dModel: 8, signal: [0, 2])
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/plain", maxMemory: 2_000)
        o.config.epochs = 4
        o.config.valEvery = 2
        o.config.learningRate = 0.01
        let plain = try TrainJob.run(o)
        #expect(plain.streamed)
        o.outDirectory = dir + "/shared"
        o.seeds = 2
        let (r, log) = try runLogged(o)
        #expect(r.streamed && log.contains { $0.contains("in one pass over the shards per epoch") }, "\(log)")
        // seeds on one split: every run's rows are the union, so run 0 gets exactly the plain run's batches
        #expect(r.outcomes.map(\.finalWeight) == plain.outcomes.map(\.finalWeight))
        #expect(r.runs[0].outcomes.map { $0.epochs.map(\.valLoss) } == plain.outcomes.map { $0.epochs.map(\.valLoss) })
        #expect(r.runs[1].valAccuracy != r.runs[0].valAccuracy || r.runs[1].outcomes[1].epochs.map(\.trainLoss) != r.runs[0].outcomes[1].epochs.map(\.trainLoss))
        // without shuffling, run 1 is the streamed run of --seed 12346 alone
        o.config.shuffle = false
        o.outDirectory = dir + "/shared-noshuffle"
        let ns = try TrainJob.run(o)
        o.seeds = 1
        o.config.seed = 12346
        o.splitPath = dir + "/shared-noshuffle/split.json"   // the same split (--seed also seeds the split)
        o.outDirectory = dir + "/solo"
        let solo = try TrainJob.run(o)
        o.splitPath = nil
        #expect(ns.runs[1].outcomes.map { $0.epochs.map(\.trainLoss) } == solo.outcomes.map { $0.epochs.map(\.trainLoss) })
        #expect(ns.runs[1].outcomes.map { $0.epochs.map(\.valLoss) } == solo.outcomes.map { $0.epochs.map(\.valLoss) })
        #expect(ns.runs[1].valAccuracy == solo.runs[0].valAccuracy)
        // folds: each run trains on its rows of the shared batches and validates its own fold
        o.config.seed = 12345
        o.config.shuffle = true
        o.cvFolds = 3
        o.outDirectory = dir + "/cv"
        let cv = try TrainJob.run(o)
        #expect(cv.runs.count == 3 && cv.runs.allSatisfy { $0.valRows == 30 && $0.outcomes.allSatisfy { $0.epochs.count == 4 } })
        #expect(cv.runs.allSatisfy { $0.outcomes.allSatisfy { $0.epochs.allSatisfy { $0.trainTotal == 60 } } })
        #expect(cv.layerTrust.allSatisfy { $0.valRows == 90 && $0.n == 3 })
    }
}
