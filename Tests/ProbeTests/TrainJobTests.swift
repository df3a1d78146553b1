import Foundation
import Probe
import Quant
import Formats
import Testing

/// `llamaprobe train` end to end through shards written by ShardWriter.
@Suite struct TrainJobTests {
    @Test("shards → train (deterministic mode) reproduces PyTorch; every output file is written and readable")
    func endToEnd() throws {
        let tc = try TrainingCase("scheduler")
        let dir = scratchDirectory()
        let (shards, split, initPath) = try tc.materialize(dir)
        let result = try TrainJob.run(tc.jobOptions(dir, shards: shards, split: split, initPath: initPath))
        let out = dir + "/out"
        #expect(!result.streamed)
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: out))
        for f in ["probes.safetensors", "probe_training_metrics.csv", "probe_training_summary.md", "accuracy_by_layer.svg", "split.json",
                  "readout.json", "probe_at_layer_0.pth", "probe_at_layer_0_final.pth", "probe_at_layer_1.pth", "probe_at_layer_1_final.pth",
                  "layer_summary.csv"] {
            #expect(files.contains(f), "missing \(f)")
        }
        #expect(files.count == 11, "\(files)")
        // Final weights: PyTorch's, through the .pth files and probes.safetensors.
        let st = try SafeTensorsFile(path: out + "/probes.safetensors")
        for l in 0..<tc.layers {
            let pth = try TorchCheckpoint.read(path: out + "/probe_at_layer_\(l)_final.pth")
            #expect(pth.map(\.name) == ["classifier.0.weight", "classifier.0.bias"])
            #expect(pth[0].shape == [tc.classes, tc.dModel] && pth[1].shape == [tc.classes])
            let dw = zip(pth[0].values, tc.finalWeights[l].weight).map { abs($0 - $1) }.max()!
            #expect(dw <= 1e-4, "layer \(l): \(dw)")
            #expect(try st.floats("layer\(l).final.weight") == pth[0].values)
            let best = try TorchCheckpoint.read(path: out + "/probe_at_layer_\(l).pth")
            let o = result.outcomes[l]
            let stBest = try st.floats("layer\(l).weight")
            #expect(best[0].values == o.bestWeight! && stBest == o.bestWeight!)
        }
        // The metrics CSV: one row per layer and epoch, the documented columns, PyTorch's losses.
        let csv = try String(contentsOfFile: out + "/probe_training_metrics.csv", encoding: .utf8).split(separator: "\n")
        #expect(csv[0] == "layer,epoch,train_loss,train_accuracy,val_accuracy,best_accuracy,is_best,lr")
        #expect(csv.count == 1 + tc.layers * tc.config.epochs)
        for (i, line) in csv.dropFirst().enumerated() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            #expect(f.count == 8)
            let l = i / tc.config.epochs, e = i % tc.config.epochs
            let ref = tc.reference[l][e]
            #expect(Int(f[0]) == l && Int(f[1]) == e + 1)
            #expect(abs(Double(f[2])! - (ref["train_loss"] as! Double)) <= 1e-5 * (ref["train_loss"] as! Double))
            #expect(f[4].isEmpty == (ref["val_accuracy"] as? Double == nil))
            // (Foundation's JSON parser may be off by an ulp; the CSV holds the exact value)
            #expect(abs(Double(f[7])! - (ref["lr"] as! Double)) <= 1e-12 * (ref["lr"] as! Double))
            #expect(f[6] == "\(ref["is_best"] as! Int)")
        }
        #expect(try SplitFile.read(path: out + "/split.json") == SplitFile(train: tc.train, val: tc.val))
        let summary = try String(contentsOfFile: out + "/probe_training_summary.md", encoding: .utf8)
        for s in ["Best layer", "precision", "Confusion matrix", "Expected calibration error", "accuracy_by_layer.svg", "Saturation"] {
            #expect(summary.contains(s), "summary lacks \(s)")
        }
        let svg = try String(contentsOfFile: out + "/accuracy_by_layer.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("polyline"))
        // No temporary directory left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).allSatisfy { !$0.contains(".tmp-") })
    }

    @Test("the saturating case warns about saturation in the summary")
    func saturationWarning() throws {
        let tc = try TrainingCase("saturate")
        let dir = scratchDirectory()
        let (shards, split, initPath) = try tc.materialize(dir)
        _ = try TrainJob.run(tc.jobOptions(dir, shards: shards, split: split, initPath: initPath))
        let summary = try String(contentsOfFile: dir + "/out/probe_training_summary.md", encoding: .utf8)
        #expect(summary.contains("**Warning:**"))
    }

    @Test("streamed data (over --max-memory) gives the same probes as resident data in the same batch order")
    func streaming() throws {
        let tc = try TrainingCase("variants")
        let dir = scratchDirectory()
        let (shards, _, initPath) = try tc.materialize(dir, rowsPerShard: 7, dtype: .f16)
        // Batches in row order both ways: resident follows the split's (sorted) train order, streaming the shards'.
        let split = dir + "/sorted.json"
        try SplitFile(train: tc.train.sorted(), val: tc.val.sorted()).json.write(toFile: split, atomically: true, encoding: .utf8)
        var a = tc.jobOptions(dir, shards: shards, split: split, initPath: initPath)
        a.outDirectory = dir + "/resident"
        var b = a
        b.outDirectory = dir + "/streamed"
        b.maxMemory = 5_000
        let ra = try TrainJob.run(a), rb = try TrainJob.run(b)
        #expect(!ra.streamed && rb.streamed)
        for (x, y) in zip(ra.outcomes, rb.outcomes) {
            #expect(x.finalWeight == y.finalWeight)
            #expect(x.epochs.map(\.trainLoss) == y.epochs.map(\.trainLoss))
            #expect(x.epochs.map(\.valAccuracy) == y.epochs.map(\.valAccuracy))
        }
        // Shuffled streaming runs and learns.
        var c = b
        c.outDirectory = dir + "/streamed-shuffled"
        c.config.shuffle = true
        c.config.epochs = 30
        let rc = try TrainJob.run(c)
        #expect(rc.outcomes.allSatisfy { $0.epochs.last!.trainLoss < $0.epochs.first!.trainLoss })
    }

    @Test("the default split and init: a fresh run, --layers, and a repeat give identical results")
    func defaults() throws {
        let tc = try TrainingCase("variants")
        let dir = scratchDirectory()
        _ = try tc.materialize(dir)
        var o = TrainJobOptions(shardDirectories: [dir + "/shards"], outDirectory: dir + "/a")
        o.config.epochs = 12
        let a = try TrainJob.run(o)
        o.outDirectory = dir + "/b"
        let b = try TrainJob.run(o)
        o.outDirectory = dir + "/c"
        o.layers = [2]
        let c = try TrainJob.run(o)
        #expect(a.outcomes.map(\.finalWeight) == b.outcomes.map(\.finalWeight))
        #expect(c.outcomes.count == 1 && c.outcomes[0].finalWeight == a.outcomes[2].finalWeight)
        // The split is scikit-learn's on the rows' labels.
        let s = try SplitFile.read(path: dir + "/a/split.json")
        let expected = try StratifiedSplit.trainTestSplit(labels: tc.labels)
        #expect(s == SplitFile(train: expected.train, val: expected.test))
        #expect(s == SplitFile(train: tc.train, val: tc.val))   // and the fixture's, from sklearn itself
        // An existing non-empty --out is refused, and replaced with --overwrite.
        o.outDirectory = dir + "/a"
        #expect(throws: TrainError.self) { _ = try TrainJob.run(o) }
        o.overwrite = true
        _ = try TrainJob.run(o)
    }
}
