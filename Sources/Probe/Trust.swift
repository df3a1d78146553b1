import Foundation

/// One training run of a `train` invocation: the reference run, or one of the --seeds × --cv runs.
public struct TrainRun: Sendable {
    /// 0-based seed index (the run's init/shuffle seed is --seed + seedIndex).
    public var seedIndex: Int
    /// 0-based --cv fold whose rows are this run's validation set; nil without --cv.
    public var fold: Int?
    public var outcomes: [LayerOutcome]
    /// Per layer: the reported validation accuracy (best checkpoint, or the final weights when no
    /// validation improved on 0) and the final weights' validation accuracy.
    public var valAccuracy: [Double]
    public var finalValAccuracy: [Double]
    public var valRows: Int
    /// Per layer: the reported probe's accuracy on the held-out test rows (--test-fraction).
    public var testAccuracy: [Double]?
    /// Validation rows per class (index = class id).
    public var valClassCounts: [Int]
    /// Share of the most frequent class among the training rows.
    public var trainMajorityShare: Double

    public init(seedIndex: Int, fold: Int?, outcomes: [LayerOutcome], valAccuracy: [Double], finalValAccuracy: [Double], valRows: Int,
                testAccuracy: [Double]?, valClassCounts: [Int], trainMajorityShare: Double) {
        self.seedIndex = seedIndex; self.fold = fold; self.outcomes = outcomes; self.valAccuracy = valAccuracy
        self.finalValAccuracy = finalValAccuracy; self.valRows = valRows; self.testAccuracy = testAccuracy
        self.valClassCounts = valClassCounts; self.trainMajorityShare = trainMajorityShare
    }
}

/// One row of layer_summary.csv.
public struct LayerTrust: Sendable, Equatable {
    public var layer: Int
    /// The first seed's validation accuracy (pooled over the folds with --cv: every row validated once),
    /// with its 95% Wilson interval over `valRows` rows.
    public var valAccuracy: Double
    public var ciLow: Double
    public var ciHigh: Double
    public var valRows: Int
    public var testAccuracy: Double?
    public var testCILow: Double?
    public var testCIHigh: Double?
    /// Mean and sample standard deviation of the validation accuracy over the `n` runs (seeds × folds).
    public var mean: Double
    public var sd: Double
    public var n: Int
    public var minimum: Double
    public var maximum: Double
}

/// What a reader needs to judge the numbers of a run: intervals, baselines, spread and warnings.
public enum Trust {
    /// The two-sided 95% normal quantile.
    public static let z95 = 1.959963984540054

    /// Wilson score interval of `successes` out of `trials` (0…1 for no trials).
    public static func wilson(successes k: Int, trials n: Int, z: Double = z95) -> (low: Double, high: Double) {
        guard n > 0 else { return (0, 1) }
        let nn = Double(n), p = Double(k) / nn, z2 = z * z
        let denominator = 1 + z2 / nn
        let center = (p + z2 / (2 * nn)) / denominator
        let half = z / denominator * (p * (1 - p) / nn + z2 / (4 * nn * nn)).squareRoot()
        // exactly 0 and 1 at the ends (the formula gives them up to rounding)
        return (k == 0 ? 0 : max(0, center - half), k == n ? 1 : min(1, center + half))
    }

    /// Mean and sample standard deviation (n − 1; 0 for a single value).
    public static func meanSD(_ v: [Double]) -> (mean: Double, sd: Double) {
        guard !v.isEmpty else { return (0, 0) }
        let m = v.reduce(0, +) / Double(v.count)
        guard v.count > 1 else { return (m, 0) }
        let ss = v.reduce(0) { $0 + ($1 - m) * ($1 - m) }
        return (m, (ss / Double(v.count - 1)).squareRoot())
    }

    /// Accuracy of always predicting the training rows' most frequent class (the lowest id on ties) on `val`.
    public static func majorityBaseline(trainLabels: [Int32], valLabels: [Int32], classes: Int) -> (classId: Int, accuracy: Double) {
        var counts = [Int](repeating: 0, count: classes)
        for l in trainLabels { counts[Int(l)] += 1 }
        let top = counts.indices.max { a, b in counts[a] < counts[b] || (counts[a] == counts[b] && a > b) } ?? 0
        let hits = valLabels.reduce(0) { $0 + (Int($1) == top ? 1 : 0) }
        return (top, valLabels.isEmpty ? 0 : Double(hits) / Double(valLabels.count))
    }

    /// Correct predictions behind an accuracy measured on `rows` rows.
    static func correct(_ accuracy: Double, rows: Int) -> Int { Int((accuracy * Double(rows)).rounded()) }

    /// Per layer: the table of layer_summary.csv. Runs are ordered seed-major within folds; the interval is
    /// the first seed's (pooled over its folds), the spread over every run.
    public static func layers(_ runs: [TrainRun], testRows: Int) -> [LayerTrust] {
        guard let first = runs.first else { return [] }
        let firstSeed = runs.filter { $0.seedIndex == 0 }
        return first.outcomes.indices.map { li in
            let k = firstSeed.reduce(0) { $0 + correct($1.valAccuracy[li], rows: $1.valRows) }
            let n = firstSeed.reduce(0) { $0 + $1.valRows }
            let ci = wilson(successes: k, trials: n)
            let all = runs.map { $0.valAccuracy[li] }
            let (m, sd) = meanSD(all)
            var t = LayerTrust(layer: first.outcomes[li].layer, valAccuracy: n > 0 ? Double(k) / Double(n) : 0, ciLow: ci.low, ciHigh: ci.high,
                               valRows: n, mean: m, sd: sd, n: all.count, minimum: all.min() ?? 0, maximum: all.max() ?? 0)
            let tests = runs.compactMap { $0.testAccuracy?[li] }
            if testRows > 0, !tests.isEmpty {
                // The first run's probe on the test rows, its interval; the mean over runs is in the summary.
                let tk = correct(tests[0], rows: testRows)
                let tci = wilson(successes: tk, trials: testRows)
                t.testAccuracy = tests[0]; t.testCILow = tci.low; t.testCIHigh = tci.high
            }
            return t
        }
    }

    /// layer_summary.csv: `layer,val_accuracy,ci_low,ci_high,val_rows`, then `test_accuracy,test_ci_low,test_ci_high`
    /// with a test set, then `mean,sd,n,min,max` with more than one run.
    /// `l2Strength` (--recipe logistic): a `l2_strength` column (C); `logistic` (--recipe both): the logistic
    /// regression's `logistic_val_accuracy,logistic_ci_low,logistic_ci_high[,logistic_test_accuracy],logistic_l2_strength`.
    public static func layerSummaryCSV(_ rows: [LayerTrust], hasTest: Bool, hasSpread: Bool, l2Strength: [Double]? = nil,
                                       logistic: (rows: [LayerTrust], c: [Double])? = nil) -> String {
        func f(_ v: Double) -> String { String(format: "%.6f", v) }
        var s = "layer,val_accuracy,ci_low,ci_high,val_rows"
        if hasTest { s += ",test_accuracy,test_ci_low,test_ci_high" }
        if hasSpread { s += ",mean,sd,n,min,max" }
        if l2Strength != nil { s += ",l2_strength" }
        if logistic != nil { s += ",logistic_val_accuracy,logistic_ci_low,logistic_ci_high" + (hasTest ? ",logistic_test_accuracy" : "") + ",logistic_l2_strength" }
        s += "\n"
        for (i, r) in rows.enumerated() {
            s += "\(r.layer),\(f(r.valAccuracy)),\(f(r.ciLow)),\(f(r.ciHigh)),\(r.valRows)"
            if hasTest { s += "," + [r.testAccuracy, r.testCILow, r.testCIHigh].map { $0.map(f) ?? "" }.joined(separator: ",") }
            if hasSpread { s += ",\(f(r.mean)),\(f(r.sd)),\(r.n),\(f(r.minimum)),\(f(r.maximum))" }
            if let c = l2Strength { s += ",\(c[i])" }
            if let (lr, c) = logistic {
                s += ",\(f(lr[i].valAccuracy)),\(f(lr[i].ciLow)),\(f(lr[i].ciHigh))" + (hasTest ? "," + (lr[i].testAccuracy.map(f) ?? "") : "") + ",\(c[i])"
            }
            s += "\n"
        }
        return s
    }

    /// --recipe both: the reference recipe and the logistic regression, layer by layer.
    public static func sideBySide(reference: [LayerTrust], logistic: [LayerTrust], c: [Double], l2Given: Bool) -> String {
        func p(_ v: Double) -> String { String(format: "%.4f", v) }
        let hasTest = reference.contains { $0.testAccuracy != nil }
        var s = "### Reference recipe and logistic regression side by side\n\n"
        s += "The logistic regression (features standardized on the training rows, multinomial, L2 strength C "
        s += l2Given ? "given by --l2-strength" : "chosen by 5-fold cross-validation on the training rows"
        s += ", L-BFGS to convergence) on the same split; the probes written are the reference recipe's.\n\n"
        s += "| layer | reference val acc | 95% interval | logistic val acc | 95% interval |" + (hasTest ? " reference test | logistic test |" : "") + " C |\n"
        s += "|---:|---:|---:|---:|---:|" + (hasTest ? "---:|---:|" : "") + "---:|\n"
        for (i, (r, l)) in zip(reference, logistic).enumerated() {
            s += "| \(r.layer) | \(p(r.valAccuracy)) | \(p(r.ciLow))–\(p(r.ciHigh)) | \(p(l.valAccuracy)) | \(p(l.ciLow))–\(p(l.ciHigh)) |"
            if hasTest { s += " \(r.testAccuracy.map(p) ?? "–") | \(l.testAccuracy.map(p) ?? "–") |" }
            s += " \(c[i]) |\n"
        }
        return s + "\n"
    }

    /// cv.csv (--cv) or seeds.csv (--seeds alone): `layer,fold,val_accuracy,seed,val_rows`, plus `test_accuracy`
    /// with a test set; one row per layer and run (fold and seed are 0-based indices; the seed is --seed + seed).
    public static func runsCSV(_ runs: [TrainRun], testRows: Int) -> String {
        let hasTest = testRows > 0 && runs.contains { $0.testAccuracy != nil }
        var s = "layer,fold,val_accuracy,seed,val_rows" + (hasTest ? ",test_accuracy" : "") + "\n"
        guard let first = runs.first else { return s }
        for li in first.outcomes.indices {
            for r in runs {
                s += "\(first.outcomes[li].layer),\(r.fold ?? 0),\(String(format: "%.6f", r.valAccuracy[li])),\(r.seedIndex),\(r.valRows)"
                if hasTest { s += "," + (r.testAccuracy.map { String(format: "%.6f", $0[li]) } ?? "") }
                s += "\n"
            }
        }
        return s
    }

    public enum WarningKind: String, Sendable, CaseIterable {
        case lrCollapsed = "lr-collapsed", underfit, overfit, smallClass = "small-class", optimisticBest = "optimistic-best"
    }

    public struct Warning: Sendable, Equatable {
        public var kind: WarningKind
        public var text: String
    }

    /// Below this share of its starting value the learning rate is said to have collapsed.
    public static let lrCollapseRatio = 1e-3
    /// Overfit: final training accuracy above the final validation accuracy by more than this.
    public static let overfitGap = 0.2
    /// Underfit: final training accuracy closes less than this share of the gap from the majority-class
    /// rate of the training rows to 1.
    public static let underfitShare = 0.5
    /// Classes with fewer validation rows than this get a warning.
    public static let minClassRows = 10

    /// The warnings of a run set (every layer and run; each kind once, naming the layers).
    /// `testAccuracy`: the best layer's test accuracy, first run and mean over the runs.
    public static func warnings(_ runs: [TrainRun], labels: [String], startLR: Double, bestLayer: Int, testAccuracy: (first: Double, mean: Double)?,
                                hasCV: Bool) -> [Warning] {
        guard let first = runs.first else { return [] }
        var out: [Warning] = []
        let layerNumbers = first.outcomes.map(\.layer)
        let multi = runs.count > 1
        func list(_ ls: [Int]) -> String { ls.count == layerNumbers.count && ls.count > 1 ? "every layer" : "layer" + (ls.count > 1 ? "s " : " ") + DataLoader.rangeText(ls) }

        // The learning rate in effect when the last validated epoch was trained.
        var collapsed: [Int] = [], lowest = Double.infinity
        for li in layerNumbers.indices {
            var hit = false
            for r in runs {
                let e = r.outcomes[li].epochs
                guard let lastVal = e.lastIndex(where: { $0.valAccuracy != nil }) else { continue }
                let lr = lastVal == 0 ? startLR : e[lastVal - 1].lr
                if lr < lrCollapseRatio * startLR { hit = true; lowest = min(lowest, lr) }
            }
            if hit { collapsed.append(layerNumbers[li]) }
        }
        if !collapsed.isEmpty {
            out.append(Warning(kind: .lrCollapsed, text: "the learning rate fell below \(lrCollapseRatio) × its start (\(startLR)) before the last validation "
                + "(down to \(String(format: "%.3g", lowest))) for \(list(collapsed))\(multi ? " in at least one run" : ""): those probes stopped learning early and "
                + "their accuracy says more about the schedule than about the layer; raise --plateau-patience, use --plateau-on val or fewer --epochs"))
        }
        var under: [Int] = [], over: [Int] = [], worstTrain = 1.0, worstGap = 0.0
        for li in layerNumbers.indices {
            let train = meanSD(runs.map { $0.outcomes[li].epochs.last?.trainAccuracy ?? 0 }).mean
            let majority = meanSD(runs.map(\.trainMajorityShare)).mean
            if train < majority + underfitShare * (1 - majority) { under.append(layerNumbers[li]); worstTrain = min(worstTrain, train) }
            if first.valRows > 0 {
                let gap = train - meanSD(runs.map { $0.finalValAccuracy[li] }).mean
                if gap > overfitGap { over.append(layerNumbers[li]); worstGap = max(worstGap, gap) }
            }
        }
        if !under.isEmpty {
            let majority = meanSD(runs.map(\.trainMajorityShare)).mean
            out.append(Warning(kind: .underfit, text: "the final training accuracy of \(list(under)) (lowest \(String(format: "%.3f", worstTrain))) "
                + "closes less than half the gap from the majority-class rate of the training rows (\(String(format: "%.3f", majority))) to 1: "
                + "the probe has not learned its own training data, so a low validation accuracy does not show that the layer lacks the information"))
        }
        if !over.isEmpty {
            out.append(Warning(kind: .overfit, text: "the final training accuracy of \(list(over)) exceeds the final validation accuracy by more than "
                + "\(overfitGap) (up to \(String(format: "%.3f", worstGap))): the probe memorises its training rows; prefer more rows or stronger weight decay, "
                + "and read the validation (not the training) accuracy"))
        }
        var small: [String] = []
        for (c, name) in labels.enumerated() {
            let counts = runs.map { c < $0.valClassCounts.count ? $0.valClassCounts[c] : 0 }
            let fewest = counts.min() ?? 0
            if fewest < minClassRows { small.append("'\(name)' \(fewest)") }
        }
        if !small.isEmpty && first.valRows > 0 {
            out.append(Warning(kind: .smallClass, text: "classes with fewer than \(minClassRows) validation rows\(hasCV ? " (in the smallest fold)" : multi ? " (in some run)" : ""): "
                + small.joined(separator: ", ") + "; their recall and precision, and the accuracy of a few-row class, swing by whole rows: add data or use --cv"))
        }
        if first.valRows > 0 {
            var t = "the best layer (\(bestLayer)) and each layer's best epoch were picked on the same validation rows whose accuracy is reported, "
                + "so the best accuracy is optimistic (a maximum over \(layerNumbers.count) layer(s) and the validations)"
            if let ta = testAccuracy {
                t += "; the held-out test accuracy of layer \(bestLayer), \(String(format: "%.4f", ta.first))"
                if multi { t += " (first run; mean over the \(runs.count) runs \(String(format: "%.4f", ta.mean)))" }
                t += ", was not used for any choice and is the number to quote"
            } else {
                t += "; set rows aside with --test-fraction for an unbiased estimate\(hasCV ? "" : ", or use --cv to average over folds")"
            }
            out.append(Warning(kind: .optimisticBest, text: t))
        }
        return out
    }

    /// The summary's section "How far to trust these numbers".
    public static func section(_ rows: [LayerTrust], warnings: [Warning], runs: [TrainRun], classes: Int, majority: (name: String, accuracy: Double),
                               bestLayer: Int, testRows: Int, testMean: [Double]?, description: String) -> String {
        func p(_ v: Double) -> String { String(format: "%.4f", v) }
        let hasTest = rows.contains { $0.testAccuracy != nil }
        let hasSpread = runs.count > 1
        var s = "## How far to trust these numbers\n\n"
        s += description + "\n\n"
        s += "Baselines on the validation rows: majority class (`\(majority.name)`, the most frequent training class) **\(p(majority.accuracy))**, "
        s += "uniform chance **\(p(1 / Double(max(classes, 1))))**. An accuracy whose 95% interval reaches a baseline is not evidence of a readable signal.\n\n"
        s += "| layer | val acc | 95% Wilson interval | rows |"
        if hasTest { s += " test acc | test 95% interval |" }
        if hasSpread { s += " mean ± sd over \(runs.count) runs | min–max |" }
        s += "\n|---:|---:|---:|---:|" + (hasTest ? "---:|---:|" : "") + (hasSpread ? "---:|---:|" : "") + "\n"
        for (i, r) in rows.enumerated() {
            s += "| \(r.layer)\(r.layer == bestLayer ? " **(best)**" : "") | \(p(r.valAccuracy)) | \(p(r.ciLow))–\(p(r.ciHigh)) | \(r.valRows) |"
            if hasTest {
                let mean = testMean.map { $0[i] }
                s += " \(r.testAccuracy.map(p) ?? "–")\(hasSpread && mean != nil ? " (mean \(p(mean!)))" : "") | "
                s += "\(r.testCILow.map(p) ?? "–")–\(r.testCIHigh.map(p) ?? "–") |"
            }
            if hasSpread { s += " \(p(r.mean)) ± \(p(r.sd)) | \(p(r.minimum))–\(p(r.maximum)) |" }
            s += "\n"
        }
        if hasTest { s += "\nThe test set (\(testRows) rows) was set aside before anything else and used for no choice.\n" }
        s += "\n### Warnings\n\n"
        if warnings.isEmpty { s += "None.\n" }
        for w in warnings { s += "- **\(w.kind.rawValue)**: \(w.text).\n" }
        return s + "\n"
    }
}
