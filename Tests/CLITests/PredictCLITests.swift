import Foundation
import Probe
import Quant
import Formats
import Testing

/// `predict` against numbers computed here from the shards and probes.safetensors, and its refusals.
@Suite struct PredictCLITests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// synth tiny → extract 60 demo rows (HF model, f32) → train 10 epochs; returns (dir, model, probes, csv).
    static func pipeline(_ dir: String) throws -> (model: String, probes: String, csv: String) {
        let all = try Dataset(path: repo.appendingPathComponent("data/demo/emotions.csv").path).rows.map { try $0.get() }
        func quoted(_ f: String) -> String { "\"" + f.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
        let csv = dir + "/d.csv"
        // every 7th row: a mix of all seven states (the file is grouped by label)
        let picked = stride(from: 0, to: all.count, by: 7).map { all[$0] }
        try (["message,label"] + picked.map { r -> String in
            guard case .message(let m) = r.content else { return "" }
            return quoted(m) + "," + quoted(r.label)
        }).joined(separator: "\n").appending("\n").write(toFile: csv, atomically: true, encoding: .utf8)
        let model = dir + "/m", shards = dir + "/shards", probes = dir + "/probes"
        for args in [["synth", "--preset", "tiny", "--out", model],
                     ["extract", "--model", model, "--data", csv, "--out", shards],
                     ["train", "--shards", shards, "--out", probes, "--epochs", "10", "--val-every", "5"]] {
            let r = try CLI.run(args)
            try #require(r.status == 0, "\(args.joined(separator: " ")): \(r.stderr)")
        }
        return (model, probes, csv)
    }

    @Test("predict gives sigmoid(W·resid_post + b) of the chosen probes at the readout token, marks the best layer, and refuses what does not fit")
    func predict() throws {
        let dir = scratch()
        let (model, probes, csv) = try Self.pipeline(dir)
        let st = try SafeTensorsFile(path: probes + "/probes.safetensors")
        let best = try #require(st.metadata["best_layer"].flatMap(Int.init))
        let labels = try JSONDecoder().decode([String].self, from: Data(st.metadata["labels"]!.utf8))

        // The first rows of the data, predicted with --data and --json at every layer.
        let shard = try Shard.read(path: dir + "/shards/" + Shard.fileName(worker: 0, index: 0))
        let n = 3, d = shard.metadata.dModel, layers = shard.layerCount
        let head = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n").prefix(n + 1).joined(separator: "\n")
        try head.write(toFile: dir + "/head.csv", atomically: true, encoding: .utf8)   // messages of the demo data have no newlines
        let r = try CLI.run(["predict", "--model", model, "--probes", probes, "--data", dir + "/head.csv", "--label-column", "label",
                             "--layer", "all", "--json"])
        try #require(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let objects = lines.filter { $0["message"] != nil }
        #expect(objects.count == n && lines.count == n + 1)
        #expect(r.stderr.contains("(best): accuracy"), "accuracy per layer on stderr: \(r.stderr)")
        // --json --label-column: the accuracies are in the JSON too (a last object), one entry per layer.
        let accuracy = try #require(lines.last?["accuracy"] as? [[String: Any]], "\(r.stdout)")
        #expect(accuracy.map { $0["layer"] as? Int } == Array(0..<layers).map { Optional($0) })
        #expect(accuracy.allSatisfy { ($0["total"] as? Int) == n && ($0["correct"] as? Int).map { (0...n).contains($0) } == true })
        #expect(accuracy.filter { $0["best"] as? Bool == true }.map { $0["layer"] as? Int } == [best])
        var worst: Float = 0
        for (i, o) in objects.enumerated() {
            #expect(o["label"] as? String == labels[Int(shard.labels[i])])
            let perLayer = o["layers"] as! [[String: Any]]
            #expect(perLayer.map { $0["layer"] as! Int } == Array(0..<layers))
            for entry in perLayer {
                let l = entry["layer"] as! Int
                let probs = entry["probabilities"] as! [String: Double]
                let w = try st.floats("layer\(l).weight"), b = try st.floats("layer\(l).bias")
                let x = shard.residPost[((i * layers) + l) * d ..< ((i * layers) + l + 1) * d]
                var expected = [Float]()
                for k in 0..<labels.count {
                    var z = b[k]
                    for (j, v) in x.enumerated() { z += w[k * d + j] * v }
                    expected.append(1 / (1 + expf(-z)))
                    worst = max(worst, abs(Float(probs[labels[k]]!) - expected[k]))
                }
                let top = expected.indices.max { expected[$0] < expected[$1] }!
                #expect(entry["prediction"] as? String == labels[top])
            }
        }
        // f32 shards of the same model and template: only the printed rounding (6 decimals) differs
        #expect(worst < 2e-6, "predict vs shards + probes.safetensors: max |Δp| = \(worst)")

        // Default: the best layer only, marked in the text output.
        let text = try CLI.run(["predict", "--model", model, "--probes", probes, "I got the job!"])
        #expect(text.status == 0 && text.stdout.contains("layer \(best) (best):"), "\(text.stdout)\(text.stderr)")
        #expect(!text.stderr.contains("warning"), "same model: no identity warning: \(text.stderr)")

        // Refusals: another d_model, fewer layers, an unknown label, a layer without a probe.
        let other = try CLI.run(["predict", "--model", CLI.fixtures.appendingPathComponent("models/mha-f32").path, "--probes", probes, "hi"])
        #expect(other.status != 0 && other.stderr.contains("d_model 128") && other.stderr.contains("hidden size is 64"), "\(other.stderr)")
        let short = dir + "/short"
        #expect(try CLI.run(["synth", "--preset", "tiny", "--layers", "2", "--out", short]).status == 0)
        let fewer = try CLI.run(["predict", "--model", short, "--probes", probes, "hi"])
        #expect(fewer.status != 0 && fewer.stderr.contains("include layer 2") && fewer.stderr.contains("has 2 layers"), "\(fewer.stderr)")
        try "message,label\nhello there,angry\n".write(toFile: dir + "/bad.csv", atomically: true, encoding: .utf8)
        let unknown = try CLI.run(["predict", "--model", model, "--probes", probes, "--data", dir + "/bad.csv", "--label-column", "label"])
        #expect(unknown.status != 0 && unknown.stderr.contains("bad.csv (row 0): label 'angry'"), "\(unknown.stderr)")
        let noLayer = try CLI.run(["predict", "--model", model, "--probes", probes, "--layer", "9", "hi"])
        #expect(noLayer.status != 0 && noLayer.stderr.contains("no probe for layer 9"), "\(noLayer.stderr)")

        // --labels: must equal the recorded label set; names the outputs of .pth-only directories.
        let wrong = try CLI.run(["predict", "--model", model, "--probes", probes, "--labels", "a,b,c,d,e,f,g", "hi"])
        #expect(wrong.status != 0 && wrong.stderr.contains("differs from the label set"), "\(wrong.stderr)")
        let count = try CLI.run(["predict", "--model", model, "--probes", probes, "--labels", "a,b", "hi"])
        #expect(count.status != 0 && count.stderr.contains("names 2 classes"), "\(count.stderr)")
        let pth = dir + "/pth-only"
        try FileManager.default.createDirectory(atPath: pth, withIntermediateDirectories: true)
        for f in try FileManager.default.contentsOfDirectory(atPath: probes) where f.hasSuffix(".pth") || f.hasSuffix(".csv") {
            try FileManager.default.copyItem(atPath: probes + "/" + f, toPath: pth + "/" + f)
        }
        let viaSafetensors = try CLI.run(["predict", "--model", model, "--probes", probes, "--json", "--layer", "all", "I got the job!"])
        let viaPth = try CLI.run(["predict", "--model", model, "--probes", pth, "--json", "--layer", "all", "I got the job!"])
        #expect(viaPth.status == 0 && viaPth.stdout == viaSafetensors.stdout, "\(viaPth.stdout)\(viaPth.stderr)")
        let renamed = try CLI.run(["predict", "--model", model, "--probes", pth, "--labels", "a,b,c,d,e,f,g", "--json", "hi"])
        #expect(renamed.status == 0 && renamed.stdout.contains("\"probabilities\":{\"a\":"), "\(renamed.stdout)\(renamed.stderr)")

        // .pth files only (as the PyTorch recipe leaves them): --layer best is refused, naming --layer N, until a
        // metrics file with the recipe's column names says which layer is best.
        let pthOnly = dir + "/pth-no-metrics"
        try FileManager.default.createDirectory(atPath: pthOnly, withIntermediateDirectories: true)
        for f in try FileManager.default.contentsOfDirectory(atPath: probes) where f.hasSuffix(".pth") {
            try FileManager.default.copyItem(atPath: probes + "/" + f, toPath: pthOnly + "/" + f)
        }
        let noBest = try CLI.run(["predict", "--model", model, "--probes", pthOnly, "hi"])
        #expect(noBest.status == 1 && noBest.stderr.contains("do not say which layer is best") && noBest.stderr.contains("pass --layer N"), "\(noBest.stdout)\(noBest.stderr)")
        try "layer,best_val_accuracy\n0,0.2\n1,0.9\n2,0.4\n".write(toFile: pthOnly + "/probe_training_metrics.csv", atomically: true, encoding: .utf8)
        let recipe = try CLI.run(["predict", "--model", model, "--probes", pthOnly, "hi"])
        #expect(recipe.status == 0 && recipe.stdout.contains("layer 1 (best):"), "\(recipe.stdout)\(recipe.stderr)")

        // Hostile probes (issue 9): NaN weights, or a layer of another width: exit 1 naming the file and layer.
        let nanDir = dir + "/nan"
        try FileManager.default.copyItem(atPath: pth, toPath: nanDir)
        var t = try TorchCheckpoint.read(path: nanDir + "/probe_at_layer_1.pth")
        t[0].values[5] = .nan
        try TorchCheckpoint.write(t, to: nanDir + "/probe_at_layer_1.pth")
        let nan = try CLI.run(["predict", "--model", model, "--probes", nanDir, "hi"])
        #expect(nan.status == 1 && nan.stderr.contains(nanDir + "/probe_at_layer_1.pth: layer 1: weight element 5 is nan; probe weights must be finite"), "\(nan.stderr)")
        t[0] = TorchTensor(name: t[0].name, shape: [t[0].shape[0], t[0].shape[1] / 2], values: Array(t[0].values.prefix(t[0].values.count / 2)))
        t[0].values[5] = 0
        try TorchCheckpoint.write(t, to: nanDir + "/probe_at_layer_1.pth")
        let narrow = try CLI.run(["predict", "--model", model, "--probes", nanDir, "hi"])
        #expect(narrow.status == 1 && narrow.stderr.contains(nanDir + "/probe_at_layer_1.pth: 7 classes × \(d / 2) inputs, unlike probe_at_layer_0.pth (7 × \(d))"), "\(narrow.stderr)")

        // Probes trained on another model with the same shapes (issue 10): refused naming both fingerprints,
        // unless --allow-other-model (then a warning).
        let twin = dir + "/twin"
        #expect(try CLI.run(["synth", "--preset", "tiny", "--seed", "7", "--out", twin, "--dtype", "f16"]).status == 0)
        let refused = try CLI.run(["predict", "--model", twin, "--probes", probes, "hi"])
        #expect(refused.status == 1 && refused.stderr.contains("were trained on model weights-v2:")
                && refused.stderr.contains("twin is weights-v2:"), "\(refused.stderr)")
        let warned = try CLI.run(["predict", "--model", twin, "--probes", probes, "--allow-other-model", "hi"])
        #expect(warned.status == 0 && warned.stderr.contains("warning: --allow-other-model"), "\(warned.stderr)")
        try? FileManager.default.removeItem(atPath: dir)
    }
}
