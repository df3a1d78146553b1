import Foundation
import Probe
import Testing

/// `--recipe logistic` against scikit-learn (Tests/fixtures/probe/make_logistic_fixtures.py).
@Suite struct LogisticTests {
    struct Reference: Decodable {
        let rows: Int, features: Int, classes: Int
        let x: [Double], y: [Int], train: [Int], val: [Int]
        let c: Double, coef: [Double], intercept: [Double], val_accuracy: Double
        let grid: [Double], folds: [[Int]], cv_mean_accuracy: [Double], best_c: Double
    }
    static let ref: Reference = try! JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: ProbeFixtures.path("logistic.json"))))

    static func rows(_ idx: [Int]) -> [Double] {
        let d = ref.features
        return idx.flatMap { ref.x[($0 * d)..<($0 * d + d)] }
    }

    @Test("LogisticRegression(C=0.5) on standardized features: scikit-learn's coefficients, intercepts and validation accuracy")
    func fixedC() {
        let r = Self.ref, d = r.features, k = r.classes
        var xt = Self.rows(r.train), xv = Self.rows(r.val)
        let st = LogisticRecipe.Standardizer(xt, rows: r.train.count, cols: d)
        st.apply(&xt, rows: r.train.count); st.apply(&xv, rows: r.val.count)
        let fit = LogisticRecipe.fit(xt, labels: r.train.map { r.y[$0] }, rows: r.train.count, cols: d, classes: k, c: r.c)
        #expect(fit.converged, "gradient \(fit.gradientMax) after \(fit.iterations) iterations")
        let scale = r.coef.reduce(0) { max($0, abs($1)) }
        let worst = zip(fit.weight, r.coef).reduce(0) { max($0, abs($1.0 - $1.1)) }
        #expect(worst < 1e-5 * scale, "max |Δcoef| \(worst) (coefficients up to \(scale))")
        let worstB = zip(fit.bias, r.intercept).reduce(0) { max($0, abs($1.0 - $1.1)) }
        #expect(worstB < 1e-5, "max |Δintercept| \(worstB)")
        let pred = LogisticRecipe.predict(xv, rows: r.val.count, cols: d, weight: fit.weight, bias: fit.bias, classes: k)
        let acc = Double(zip(pred, r.val.map { r.y[$0] }).filter { $0 == $1 }.count) / Double(r.val.count)
        #expect(acc == r.val_accuracy)

        // Folded into raw-feature weights, the probe gives the same scores on unstandardized rows.
        let folded = st.fold(weight: fit.weight, bias: fit.bias, classes: k)
        let raw = Self.rows(r.val)
        #expect(LogisticRecipe.predict(raw, rows: r.val.count, cols: d, weight: folded.weight, bias: folded.bias, classes: k) == pred)
    }

    @Test("the strength chosen by 5-fold CV on the training rows is GridSearchCV(StandardScaler + LogisticRegression)'s")
    func chosenC() {
        let r = Self.ref, d = r.features
        let xt = Self.rows(r.train)
        let (c, accuracies) = LogisticRecipe.chooseC(xt, labels: r.train.map { r.y[$0] }, rows: r.train.count, cols: d,
                                                     classes: r.classes, folds: r.folds, grid: r.grid)
        #expect(zip(LogisticRecipe.defaultGrid, r.grid).allSatisfy { abs($0 - $1) <= 1e-12 * $1 }, "the grid is LogisticRegressionCV's")
        #expect(c == r.best_c, "chose C \(c), scikit-learn \(r.best_c)")
        let worst = zip(accuracies, r.cv_mean_accuracy).reduce(0) { max($0, abs($1.0 - $1.1)) }
        #expect(worst <= 1.0 / 48 / 5 + 1e-12, "mean CV accuracies differ by \(worst) (at most one validation row of one fold allowed)")
    }
}

@Suite struct LogisticTrainJobTests {
    @Test("train --recipe logistic --l2-strength 0.5 writes scikit-learn's probe folded to raw features; predict reads it with a softmax; layers do not depend on threads")
    func trainJob() throws {
        let r = LogisticTests.ref, d = r.features, k = r.classes
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Two layers: the fixture's features and their negation.
        var values = [Float]()
        for i in 0..<r.rows {
            let row = r.x[(i * d)..<(i * d + d)].map { Float($0) }
            values += row + row.map { -$0 }
        }
        try writeShards(dir + "/shards", values: values, labels: r.y, layers: 2, dModel: d, labelNames: (0..<k).map { "c\($0)" })
        try SplitFile(train: r.train, val: r.val).json.write(toFile: dir + "/split.json", atomically: true, encoding: .utf8)
        var results: [[Float]] = []
        for threads in [1, 2] {
            var o = TrainJobOptions(shardDirectories: [dir + "/shards"], outDirectory: dir + "/out\(threads)")
            o.config.recipe = .logistic
            o.config.l2Strength = r.c
            o.config.threads = threads
            o.splitPath = dir + "/split.json"
            let res = try TrainJob.run(o)
            #expect(res.outcomes.map { $0.epochs[0].valAccuracy } == [r.val_accuracy, r.val_accuracy])
            let set = try ProbeSet.load(directory: dir + "/out\(threads)")
            #expect(set.recipe == .logistic)
            results.append(set.probes[0]!.weight + set.probes[1]!.weight + set.probes[0]!.bias)
            // scikit-learn's coefficients folded through the training rows' standardization.
            let xt = LogisticTests.rows(r.train)
            let st = LogisticRecipe.Standardizer(xt, rows: r.train.count, cols: d)
            let folded = st.fold(weight: r.coef, bias: r.intercept, classes: k)
            let scale = folded.weight.reduce(0) { max($0, abs($1)) }
            let w0 = set.probes[0]!.weight, w1 = set.probes[1]!.weight
            #expect(zip(w0, folded.weight).allSatisfy { abs(Double($0) - $1) < 1e-4 * scale }, "layer 0 vs scikit-learn")
            #expect(zip(w1, folded.weight).allSatisfy { abs(Double($0) + $1) < 1e-4 * scale }, "layer 1 (negated features)")
            // predict: softmax probabilities over the classes, argmax = the fitted class.
            let row = r.x[(r.val[0] * d)..<(r.val[0] * d + d)].map { Float($0) }
            let p = row.withUnsafeBufferPointer { set.probabilities(layer: 0, residual: $0.baseAddress!) }
            #expect(abs(p.reduce(0, +) - 1) < 1e-5, "softmax sums to 1: \(p)")
        }
        #expect(results[0] == results[1], "1 vs 2 threads: identical probes")
    }
}
