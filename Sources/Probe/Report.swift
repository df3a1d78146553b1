import Foundation

/// Classification statistics of one probe on the validation set (for the summary).
public struct ClassificationReport: Sendable {
    public var labels: [String]
    /// confusion[true][predicted]
    public var confusion: [[Int]]
    public var precision: [Double]
    public var recall: [Double]
    public var f1: [Double]
    public var support: [Int]
    public var accuracy: Double
    /// Expected calibration error of the top sigmoid output, 10 equal-width bins.
    public var ece: Double
    public var bins: [(count: Int, confidence: Double, accuracy: Double)]

    /// `outputs` [n, classes] sigmoid outputs, `labels` [n]; prediction = first maximum.
    public init(outputs: [Float], labels: [Int32], names: [String]) {
        let c = names.count, n = labels.count
        self.labels = names
        var conf = [[Int]](repeating: [Int](repeating: 0, count: c), count: c)
        var binCount = [Int](repeating: 0, count: 10), binConf = [Double](repeating: 0, count: 10), binCorrect = [Int](repeating: 0, count: 10)
        var correct = 0
        for i in 0..<n {
            var best = 0
            for j in 1..<c where outputs[i * c + j] > outputs[i * c + best] { best = j }
            let y = Int(labels[i])
            conf[y][best] += 1
            if best == y { correct += 1 }
            let cf = Double(outputs[i * c + best])
            let b = min(9, Int(cf * 10))
            binCount[b] += 1; binConf[b] += cf; binCorrect[b] += best == y ? 1 : 0
        }
        let sup = conf.map { $0.reduce(0, +) }
        let predicted = (0..<c).map { j in conf.reduce(0) { $0 + $1[j] } }
        let prec = (0..<c).map { predicted[$0] > 0 ? Double(conf[$0][$0]) / Double(predicted[$0]) : 0 }
        let rec = (0..<c).map { sup[$0] > 0 ? Double(conf[$0][$0]) / Double(sup[$0]) : 0 }
        f1 = (0..<c).map { j in prec[j] + rec[j] > 0 ? 2 * prec[j] * rec[j] / (prec[j] + rec[j]) : 0 }
        confusion = conf; support = sup; precision = prec; recall = rec
        accuracy = n > 0 ? Double(correct) / Double(n) : 0
        let bs: [(count: Int, confidence: Double, accuracy: Double)] = (0..<10).map { b in
            binCount[b] == 0 ? (0, 0, 0) : (binCount[b], binConf[b] / Double(binCount[b]), Double(binCorrect[b]) / Double(binCount[b]))
        }
        bins = bs
        ece = n > 0 ? bs.reduce(0) { $0 + Double($1.count) / Double(n) * abs($1.confidence - $1.accuracy) } : 0
    }
}

/// The files of a training run other than the checkpoints.
public enum TrainingReport {
    /// Share of outputs exactly 0 or 1 above which a layer gets a saturation warning.
    public static let saturationWarning = 0.01

    public static func metricsCSV(_ outcomes: [LayerOutcome]) -> String {
        var s = ProbeFiles.metricsColumns.joined(separator: ",") + "\n"
        for o in outcomes {
            for e in o.epochs {
                s += "\(o.layer),\(e.epoch),\(e.trainLoss),\(e.trainAccuracy),\(e.valAccuracy.map { "\($0)" } ?? ""),"
                s += "\(e.bestAccuracy),\(e.isBest ? 1 : 0),\(e.lr)\n"
            }
        }
        return s
    }

    /// accuracy_by_layer.svg: final training accuracy and best validation accuracy per layer; optionally ± `spread`
    /// bars on the validation points, dashed baseline lines, and the best layer's held-out test accuracy (a diamond).
    public static func accuracySVG(layers: [Int], train: [Double], val: [Double], bestLayer: Int?, spread: [Double]? = nil,
                                   valName: String = "validation (best)", baselines: [(name: String, value: Double)] = [],
                                   test: (layer: Int, accuracy: Double)? = nil) -> String {
        let w = 720.0, h = 372.0, left = 56.0, right = 20.0, top = 52.0, bottom = 48.0
        let pw = w - left - right, ph = h - top - bottom
        let lo = Double(layers.min() ?? 0), hi = Double(max((layers.max() ?? 1), (layers.min() ?? 0) + 1))
        func x(_ l: Int) -> Double { left + (Double(l) - lo) / (hi - lo) * pw }
        func y(_ a: Double) -> Double { top + (1 - a) * ph }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" viewBox=\"0 0 \(Int(w)) \(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(f(w / 2))\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Probe accuracy by layer</text>\n"
        for t in stride(from: 0.0, through: 1.0001, by: 0.2) {
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y(t)))\" x2=\"\(f(w - right))\" y2=\"\(f(y(t)))\" stroke=\"#ddd\"/>\n"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(y(t) + 4))\" text-anchor=\"end\">\(String(format: "%.1f", t))</text>\n"
        }
        let step = max(1, Int((hi - lo) / 10))
        for l in layers where (l - Int(lo)) % step == 0 {
            s += "<line x1=\"\(f(x(l)))\" y1=\"\(f(top + ph))\" x2=\"\(f(x(l)))\" y2=\"\(f(top + ph + 4))\" stroke=\"black\"/>\n"
            s += "<text x=\"\(f(x(l)))\" y=\"\(f(top + ph + 18))\" text-anchor=\"middle\">\(l)</text>\n"
        }
        s += "<line x1=\"\(f(left))\" y1=\"\(f(top + ph))\" x2=\"\(f(w - right))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
        s += "<text x=\"\(f(left + pw / 2))\" y=\"\(f(h - 10))\" text-anchor=\"middle\">layer</text>\n"
        s += "<text x=\"16\" y=\"\(f(top + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 16 \(f(top + ph / 2)))\">accuracy</text>\n"
        // the legend sits above the plot, where no point can hide it
        for (i, b) in baselines.enumerated() {
            let color = i == 0 ? "#7f7f7f" : "#bcbd22"
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y(b.value)))\" x2=\"\(f(w - right))\" y2=\"\(f(y(b.value)))\" stroke=\"\(color)\" stroke-dasharray=\"6 4\"/>\n"
            s += "<text x=\"\(f(w - right - 4))\" y=\"\(f(y(b.value) - 4))\" text-anchor=\"end\" fill=\"\(color)\">\(b.name) \(String(format: "%.3f", b.value))</text>\n"
        }
        if let sd = spread {
            for (l, (v, d)) in zip(layers, zip(val, sd)) where d > 0 {
                s += "<line x1=\"\(f(x(l)))\" y1=\"\(f(y(min(1, v + d))))\" x2=\"\(f(x(l)))\" y2=\"\(f(y(max(0, v - d))))\" stroke=\"#d62728\" stroke-opacity=\"0.5\" stroke-width=\"3\"/>\n"
            }
        }
        if let t = test, layers.contains(t.layer) {
            let cx = x(t.layer), cy = y(t.accuracy)
            s += "<polygon points=\"\(f(cx)),\(f(cy - 6)) \(f(cx + 6)),\(f(cy)) \(f(cx)),\(f(cy + 6)) \(f(cx - 6)),\(f(cy))\" fill=\"#2ca02c\"/>\n"
            s += "<text x=\"\(f(cx + 9))\" y=\"\(f(cy + 4))\" fill=\"#2ca02c\">test \(String(format: "%.3f", t.accuracy))</text>\n"
        }
        for (values, color, name, dx) in [(train, "#1f77b4", "train (final)", -430.0), (val, "#d62728", valName, -290.0)] {
            let pts = zip(layers, values).map { "\(f(x($0))),\(f(y($1)))" }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(pts)\"/>\n"
            for (l, v) in zip(layers, values) { s += "<circle cx=\"\(f(x(l)))\" cy=\"\(f(y(v)))\" r=\"2.5\" fill=\"\(color)\"/>\n" }
            s += "<line x1=\"\(f(w - right + dx))\" y1=\"\(f(top - 16))\" x2=\"\(f(w - right + dx + 20))\" y2=\"\(f(top - 16))\" stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            s += "<text x=\"\(f(w - right + dx + 26))\" y=\"\(f(top - 12))\">\(name)</text>\n"
        }
        if let b = bestLayer, let i = layers.firstIndex(of: b) {
            s += "<circle cx=\"\(f(x(b)))\" cy=\"\(f(y(val[i])))\" r=\"6\" fill=\"none\" stroke=\"#d62728\"/>\n"
        }
        return s + "</svg>\n"
    }

    public struct Context {
        public var shardDirectories: [String]
        public var metadata: ShardMetadata
        public var trainRows: Int
        public var valRows: Int
        public var config: TrainConfig
        public var streamed: Bool
        public var seconds: Double
        public var splitSource: String
        public var initSource: String
        /// Replaces the reference recipe's description (--recipe logistic).
        public var recipeText: String?
        /// The hook point trained on (`--hook`).
        public var hook = ReadoutRecipe.defaultHook
        public init(shardDirectories: [String], metadata: ShardMetadata, trainRows: Int, valRows: Int, config: TrainConfig,
                    streamed: Bool, seconds: Double, splitSource: String, initSource: String, recipeText: String? = nil) {
            self.shardDirectories = shardDirectories; self.metadata = metadata; self.trainRows = trainRows; self.valRows = valRows
            self.config = config; self.streamed = streamed; self.seconds = seconds; self.splitSource = splitSource; self.initSource = initSource
            self.recipeText = recipeText
        }
    }

    /// probe_training_summary.md.
    public static func summary(_ ctx: Context, outcomes: [LayerOutcome], finalVal: [Double], bestLayer: Int,
                               bestReport: ClassificationReport, bestFromCheckpoint: Bool, trust: String = "") -> String {
        let c = ctx.config
        func p(_ v: Double) -> String { String(format: "%.4f", v) }
        var s = "# Probe training summary\n\n"
        s += "- Data: \(ctx.trainRows + ctx.valRows) rows from \(ctx.shardDirectories.map { "`\($0)`" }.joined(separator: ", ")) "
        s += "(model `\(ctx.metadata.model)`, d_model \(ctx.metadata.dModel), stored \(ctx.metadata.dtype.rawValue)); "
        s += "\(ctx.trainRows) training, \(ctx.valRows) validation rows (\(ctx.splitSource)).\n"
        let position = ctx.metadata.readout?.position ?? "last"
        if ctx.hook != ReadoutRecipe.defaultHook || position != "last" {
            s += "- Read: hook `\(ctx.hook)` at position `\(position)` (of the stored \(ctx.metadata.hooks.map { "`\($0)`" }.joined(separator: ", "))).\n"
        }
        s += "- Classes (\(ctx.metadata.labels.count)): \(ctx.metadata.labels.map { "`\($0)`" }.joined(separator: ", ")).\n"
        if let r = ctx.recipeText { s += "- Recipe: \(r)\n" } else {
        s += "- Recipe: Linear + sigmoid, BCELoss, Adam (lr \(c.learningRate), betas (\(c.adam.beta1), \(c.adam.beta2)), eps \(c.adam.eps), "
        s += "weight decay \(c.adam.weightDecay) coupled\(c.adam.biasDecay ? ", biases decayed" : ", biases exempt")), "
        s += "ReduceLROnPlateau(factor \(c.plateauFactor), patience \(c.plateauPatience)) on the \(c.plateauOn == .train ? "training" : "validation") loss; "
        s += "\(c.epochs) epochs, batch \(c.batchSize), validation batch \(c.valBatchSize) every \(c.effectiveValEvery) epoch(s); "
        s += "initial weights: \(ctx.initSource); \(c.shuffle ? "shuffled every epoch (seed \(c.seed))" : "not shuffled").\n"
        }
        s += "- \(outcomes.count) layers trained in \(String(format: "%.1f", ctx.seconds)) s"
        s += ctx.streamed ? ", data streamed from the shards every epoch (larger than --max-memory).\n\n" : ", data decoded once and kept in memory.\n\n"
        s += "![accuracy by layer](accuracy_by_layer.svg)\n\n"
        s += "## Per layer\n\n"
        s += "| layer | best val acc | best epoch | final train acc | final val acc | final train loss | final lr | saturated outputs |\n"
        s += "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        for (o, fv) in zip(outcomes, finalVal) {
            let last = o.epochs.last!
            s += "| \(o.layer)\(o.layer == bestLayer ? " **(best)**" : "") | \(o.bestEpoch == nil ? "–" : p(o.bestAccuracy)) | "
            s += "\(o.bestEpoch.map(String.init) ?? "–") | \(p(last.trainAccuracy)) | \(p(fv)) | \(String(format: "%.6f", last.trainLoss)) | "
            s += "\(String(format: "%.3g", last.lr)) | \(String(format: "%.2f%%", 100 * o.saturatedShare)) |\n"
        }
        let best = outcomes.first { $0.layer == bestLayer }!
        if !trust.isEmpty { s += "\n" + trust }
        s += "\n**Best layer: \(bestLayer)**"
        if let e = best.bestEpoch {
            s += " — validation accuracy \(p(best.bestAccuracy)) at epoch \(e) (checkpoint `\(ProbeFiles.best(layer: bestLayer))`).\n\n"
        } else {
            s += " — no validation improved on 0, so no best checkpoint was written; the figures below use the final weights.\n\n"
        }
        s += "## Layer \(bestLayer) on the validation set (\(bestFromCheckpoint ? "best" : "final") checkpoint)\n\n"
        s += "| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|\n"
        for (j, name) in bestReport.labels.enumerated() {
            s += "| \(name) | \(p(bestReport.precision[j])) | \(p(bestReport.recall[j])) | \(p(bestReport.f1[j])) | \(bestReport.support[j]) |\n"
        }
        s += "\nConfusion matrix (rows: true class, columns: predicted class):\n\n"
        s += "| true \\ predicted | " + bestReport.labels.joined(separator: " | ") + " |\n"
        s += "|---|" + String(repeating: "---:|", count: bestReport.labels.count) + "\n"
        for (j, row) in bestReport.confusion.enumerated() {
            s += "| \(bestReport.labels[j]) | " + row.map(String.init).joined(separator: " | ") + " |\n"
        }
        s += "\n## Calibration\n\n"
        s += "Expected calibration error of the top sigmoid output (10 equal-width confidence bins, validation set): "
        s += "**\(p(bestReport.ece))**. The sigmoid outputs are one-vs-rest scores, not a distribution over classes.\n\n"
        s += "| confidence | rows | mean confidence | accuracy |\n|---|---:|---:|---:|\n"
        for (b, bin) in bestReport.bins.enumerated() where bin.count > 0 {
            s += "| \(String(format: "%.1f–%.1f", Double(b) / 10, Double(b + 1) / 10)) | \(bin.count) | \(p(bin.confidence)) | \(p(bin.accuracy)) |\n"
        }
        s += "\n## Saturation\n\n"
        let saturated = outcomes.filter { $0.saturatedShare > saturationWarning }
        if saturated.isEmpty {
            s += "No layer's probe saturates: at most \(String(format: "%.2f%%", 100 * (outcomes.map(\.saturatedShare).max() ?? 0))) of the last epoch's training outputs are exactly 0 or 1.\n"
        } else {
            s += "**Warning:** in the last epoch, these layers' probes output exactly 0 or 1 (in float32) for more than "
            s += "\(Int(saturationWarning * 100))% of the training outputs. Those outputs pass no gradient (BCELoss's backward "
            s += "multiplies by s(1 − s) = 0) and their log is clamped at −100, so the loss and accuracy stop reflecting the data; "
            s += "the activations are probably very large (normalize them or lower --lr).\n\n"
            for o in saturated { s += "- layer \(o.layer): \(String(format: "%.2f%%", 100 * o.saturatedShare))\n" }
        }
        return s
    }
}
