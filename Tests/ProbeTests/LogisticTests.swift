import Foundation
import Probe
import Quant
import Formats
import Testing

/// `--recipe logistic` against scikit-learn (Tests/fixtures/probe/make_logistic_fixtures.py).
@Suite struct LogisticTests {
    struct Case {
        let values: [Float], labels: [Int], layers: Int, d: Int, classes: Int, train: [Int], val: [Int]
        let fits: [[String: Any]]
        init() throws {
            let f = try SafeTensorsFile(path: ProbeFixtures.path("logistic.safetensors"))
            let j = try ProbeFixtures.json("logistic.json")
            let shape = try f.info("resid_post").shape
            values = try f.floats("resid_post"); labels = try f.integers("labels").map { Int($0) }
            layers = shape[1]; d = shape[2]; classes = j["classes"] as! Int
            train = j["train"] as! [Int]; val = j["val"] as! [Int]
            fits = j["fits"] as! [[String: Any]]
        }
        func layer(_ l: Int) -> [Double] {
            var x = [Double]()
            for r in 0..<labels.count { for j in 0..<d { x.append(Double(values[(r * layers + l) * d + j])) } }
            return x
        }
    }

    @Test("LogisticRegression(C) on standardized features: coefficients and accuracy as scikit-learn's")
    func matchesSklearn() throws {
        let c = try Case()
        #expect(c.fits.count == 6)
        for ref in c.fits {
            let l = ref["layer"] as! Int, C = ref["C"] as! Double
            let x = c.layer(l)
            let (fit, _) = LogisticProbe.fit(x: x, y: c.labels, d: c.d, classes: c.classes, rows: c.train, c: C)
            #expect(fit.converged, "layer \(l) C \(C): \(fit.iterations) iterations")
            let w = ref["weight"] as! [Double], b = ref["bias"] as! [Double]
            let scale = max(w.map(abs).max()!, b.map(abs).max()!)
            let dw = zip(fit.weight, w).map { abs($0 - $1) }.max()!, db = zip(fit.bias, b).map { abs($0 - $1) }.max()!
            #expect(dw <= 1e-5 * scale && db <= 1e-5 * scale, "layer \(l) C \(C): weights off by \(dw), biases by \(db) (scale \(scale))")
            let acc = LogisticProbe.accuracy(fit, x: x, y: c.labels, d: c.d, classes: c.classes, rows: c.val)
            #expect(abs(acc - (ref["val_accuracy"] as! Double)) < 1e-12, "layer \(l) C \(C): \(acc)")
            let trainAcc = LogisticProbe.accuracy(fit, x: x, y: c.labels, d: c.d, classes: c.classes, rows: c.train)
            #expect(abs(trainAcc - (ref["train_accuracy"] as! Double)) < 1e-12)
        }
    }

    @Test("--recipe logistic writes the folded probes (as scikit-learn's), --recipe both reports them beside the reference")
    func endToEnd() throws {
        let c = try Case()
        let dir = scratchDirectory()
        try writeShards(dir + "/shards", values: c.values, labels: c.labels, layers: c.layers, dModel: c.d,
                        labelNames: (0..<c.classes).map { "c\($0)" })
        var o = TrainJobOptions(shardDirectories: [dir + "/shards"], outDirectory: dir + "/logistic")
        o.recipe = .logistic
        o.l2Strength = 1
        let (r, log) = try runLogged(o)
        #expect(log.contains { $0.hasPrefix("fitting 3 logistic regressions") }, "\(log)")
        let st = try SafeTensorsFile(path: dir + "/logistic/probes.safetensors")
        for ref in c.fits where ref["C"] as! Double == 1 {
            let l = ref["layer"] as! Int
            let w = ref["weight"] as! [Double], b = ref["bias"] as! [Double]
            let scale = w.map(abs).max()!
            let got = try st.floats("layer\(l).final.weight"), gotB = try st.floats("layer\(l).final.bias")
            #expect(zip(got, w).allSatisfy { abs(Double($0) - $1) <= 1e-4 * scale }, "layer \(l)")
            #expect(zip(gotB, b).allSatisfy { abs(Double($0) - $1) <= 1e-4 * scale }, "layer \(l)")
            // accuracy through the float32 Linear probe (argmax of sigmoid = argmax of the logits)
            #expect(abs(r.runs[0].valAccuracy[l] - (ref["val_accuracy"] as! Double)) <= 0.01, "layer \(l)")
            let pth = try TorchCheckpoint.read(path: dir + "/logistic/probe_at_layer_\(l).pth")
            #expect(pth[0].values == got)
        }
        #expect(r.logisticC == [1, 1, 1])
        // predict reads logistic probes with a softmax over the classes (recorded as output = softmax); reference
        // probes keep one sigmoid per class.
        let set = try ProbeSet.load(directory: dir + "/logistic")
        #expect(set.output == .softmax && st.metadata["output"] == "softmax")
        let row = Array(c.values[(c.d * 2)..<(c.d * 3)])   // row 0, layer 2
        let p = row.withUnsafeBufferPointer { set.probabilities(layer: 2, residual: $0.baseAddress!) }
        let w2 = try st.floats("layer2.weight"), b2 = try st.floats("layer2.bias")
        let z = (0..<c.classes).map { k in Double(b2[k]) + (0..<c.d).reduce(0.0) { $0 + Double(w2[k * c.d + $1]) * Double(row[$1]) } }
        let ez = z.map { exp($0 - z.max()!) }
        #expect(zip(p, ez).allSatisfy { abs(Double($0) - $1 / ez.reduce(0, +)) < 1e-5 }, "softmax(W·x + b): \(p)")
        let summary = try String(contentsOfFile: dir + "/logistic/probe_training_summary.md", encoding: .utf8)
        #expect(summary.contains("- Recipe: multinomial logistic regression") && summary.contains("C = 1.0 (--l2-strength)"))
        let csv = try readCSV(dir + "/logistic/layer_summary.csv")
        #expect(csv[0].last == "l2_strength" && csv[1].last == "1.0")

        // with --cv and --seeds: one deterministic fit per fold (seeds do not apply), each validating its own fold
        var cvo = o
        cvo.cvFolds = 3
        cvo.seeds = 2
        cvo.outDirectory = dir + "/logistic-cv"
        let (cvr, cvlog) = try runLogged(cvo)
        #expect(cvr.runs.count == 3 && cvr.runs.map(\.fold) == [0, 1, 2] && cvr.layerTrust.allSatisfy { $0.valRows == 240 && $0.n == 3 })
        #expect(cvlog.contains { $0.contains("the fit is deterministic, one run per split") })
        #expect(try readCSV(dir + "/logistic-cv/cv.csv").count == 1 + 3 * 3)

        // both: the reference probes are written (identical to a reference run), the logistic beside them; C by CV.
        o.recipe = .reference
        o.l2Strength = nil
        o.config.epochs = 5
        o.outDirectory = dir + "/reference"
        let ref = try TrainJob.run(o)
        #expect(try ProbeSet.load(directory: dir + "/reference").output == .sigmoid)
        o.recipe = .both
        o.outDirectory = dir + "/both"
        let both = try TrainJob.run(o)
        #expect(both.outcomes.map(\.finalWeight) == ref.outcomes.map(\.finalWeight))
        #expect(both.logisticRuns.count == 1 && both.logisticC.allSatisfy { LogisticProbe.grid.contains($0) })
        let bcsv = try readCSV(dir + "/both/layer_summary.csv")
        #expect(bcsv[0] == ["layer", "val_accuracy", "ci_low", "ci_high", "val_rows", "logistic_val_accuracy", "logistic_ci_low",
                            "logistic_ci_high", "logistic_l2_strength"])
        // the logistic regression reads the later layers far better than 5 epochs of the recipe
        #expect(Double(bcsv[3][5])! > 0.9 && Double(bcsv[3][5])! > Double(bcsv[3][1])!)
        let bs = try String(contentsOfFile: dir + "/both/probe_training_summary.md", encoding: .utf8)
        #expect(bs.contains("Reference recipe and logistic regression side by side") && bs.contains("chosen by 5-fold cross-validation"))
        // internal CV: the strength with the best mean accuracy over the grid, then the fit on every training row
        let x2 = c.layer(2)
        let cv = try LogisticProbe.crossValidated(x: x2, y: c.labels, d: c.d, classes: c.classes, rows: c.train, seed: 12345)
        #expect(cv.scores.count == 9 && cv.fit.c == both.logisticC[2])
        #expect(cv.scores[LogisticProbe.grid.firstIndex(of: cv.fit.c)!] == cv.scores.max())
        // streamed data is refused with the way out
        o.maxMemory = 1000
        o.outDirectory = dir + "/streamed"
        let e = #expect(throws: TrainError.self) { _ = try TrainJob.run(o) }
        #expect(e?.reason.contains("--recipe both needs the activations in memory") == true, "\(e?.reason ?? "")")
    }
}
