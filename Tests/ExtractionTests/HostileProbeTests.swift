#if canImport(Glibc)
import Glibc
#endif
import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats
import Testing

/// Issue 9, predict's side: probe directories built in each test with one thing wrong, and long dataset
/// fields whose tokenization must stay bounded.
@Suite struct HostileProbeTests {
    static func expectError(_ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("expected an error mentioning \(fragments)", sourceLocation: sourceLocation)
        } catch {
            let message = error.localizedDescription
            for f in fragments { #expect(message.contains(f), "'\(message)' lacks '\(f)'", sourceLocation: sourceLocation) }
        }
    }

    /// `probe_at_layer_L.pth` with a [classes, d] weight (values from `weight`) and a [classes] bias.
    static func pth(_ dir: String, _ name: String, classes: Int, d: Int, weight: (Int) -> Float = { Float($0) * 0.01 }) throws {
        try TorchCheckpoint.write([TorchTensor(name: "classifier.0.weight", shape: [classes, d], values: (0..<(classes * d)).map(weight)),
                                   TorchTensor(name: "classifier.0.bias", shape: [classes], values: [Float](repeating: 0, count: classes))],
                                  to: dir + "/" + name)
    }

    @Test("a .pth probe directory: layer -1, metrics naming a missing layer, widths that differ, zero classes, NaN weights")
    func pthDirectories() throws {
        let base = tempDir()
        func fresh(_ name: String) throws -> String {
            let d = base + "/" + name
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            try Self.pth(d, "probe_at_layer_0.pth", classes: 7, d: 256)
            try Self.pth(d, "probe_at_layer_1.pth", classes: 7, d: 256)
            return d
        }
        let ok = try fresh("ok")
        let set = try ProbeSet.load(directory: ok)
        #expect(set.dModel == 256 && set.labels.count == 7 && set.probes.keys.sorted() == [0, 1])

        let neg = try fresh("negative")
        try Self.pth(neg, "probe_at_layer_-1.pth", classes: 7, d: 256)
        Self.expectError([neg + "/probe_at_layer_-1.pth", "'-1' is not a layer number"]) { _ = try ProbeSet.load(directory: neg) }

        let metrics = try fresh("metrics")
        try "layer,epoch,train_loss,train_acc,val_loss,best_val_acc\n0,1,0.5,0.5,0.5,0.5\n9,1,0.5,0.5,0.5,0.9\n"
            .write(toFile: metrics + "/probe_training_metrics.csv", atomically: true, encoding: .utf8)
        Self.expectError([metrics + "/probe_training_metrics.csv", "names layer 9, which has no probe_at_layer_9.pth"]) {
            _ = try ProbeSet.load(directory: metrics)
        }

        let widths = try fresh("widths")
        try Self.pth(widths, "probe_at_layer_1.pth", classes: 7, d: 128)
        Self.expectError([widths + "/probe_at_layer_1.pth", "7 classes × 128 inputs, unlike probe_at_layer_0.pth (7 × 256)"]) {
            _ = try ProbeSet.load(directory: widths)
        }

        let zero = try fresh("zero")
        try Self.pth(zero, "probe_at_layer_0.pth", classes: 0, d: 256)
        Self.expectError([zero + "/probe_at_layer_0.pth", "weight [0, 256] and bias [0] are not a probe's [classes ≥ 2, d_model] and [classes]"]) {
            _ = try ProbeSet.load(directory: zero)
        }

        let nan = try fresh("nan")
        try Self.pth(nan, "probe_at_layer_1.pth", classes: 7, d: 256) { $0 == 300 ? .nan : 0.1 }
        Self.expectError([nan + "/probe_at_layer_1.pth", "layer 1: weight element 300 is nan; probe weights must be finite"]) {
            _ = try ProbeSet.load(directory: nan)
        }

        let fifo = try fresh("fifo")
        try FileManager.default.removeItem(atPath: fifo + "/probe_at_layer_1.pth")
        #expect(mkfifo(fifo + "/probe_at_layer_1.pth", 0o644) == 0)
        Self.expectError([fifo + "/probe_at_layer_1.pth", "is a FIFO (named pipe), not a regular file"]) { _ = try ProbeSet.load(directory: fifo) }
        try? FileManager.default.removeItem(atPath: base)
    }

    /// probes.safetensors with `layers` ([classes, width] each) and the given metadata overrides.
    static func probesFile(_ dir: String, widths: [Int: Int], classes: Int = 3, metadata: [String: String?] = [:],
                           value: (Int, Int) -> Float = { _, i in Float(i) * 0.01 }) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let layers = widths.keys.sorted()
        var meta: [String: String] = ["format": "llamaprobe-probes", "labels": "[\"a\",\"b\",\"c\"]",
                                      "layers": "[" + layers.map(String.init).joined(separator: ",") + "]",
                                      "best_layer": String(layers[0]), "d_model": String(widths[layers[0]]!), "model": "m"]
        for (k, v) in metadata { meta[k] = v }
        var specs: [SafeTensorsWriter.Spec] = []
        for l in layers { specs += [.init("layer\(l).weight", .f32, [classes, widths[l]!]), .init("layer\(l).bias", .f32, [classes])] }
        let w = try SafeTensorsWriter(path: dir + "/probes.safetensors", tensors: specs, metadata: meta)
        for l in layers {
            try w.write((0..<(classes * widths[l]!)).map { value(l, $0) })
            try w.write([Float](repeating: 0, count: classes))
        }
        try w.commit()
    }

    @Test("probes.safetensors: missing or foreign best_layer, widths that differ, NaN weights, too few classes")
    func safetensorsProbes() throws {
        let base = tempDir()
        try Self.probesFile(base + "/ok", widths: [0: 8, 1: 8])
        #expect(try ProbeSet.load(directory: base + "/ok").dModel == 8)
        let st = { (name: String) in base + "/" + name + "/probes.safetensors" }
        try Self.probesFile(base + "/nobest", widths: [0: 8, 1: 8], metadata: ["best_layer": nil])
        Self.expectError([st("nobest"), "metadata 'best_layer' is missing"]) { _ = try ProbeSet.load(directory: base + "/nobest") }
        try Self.probesFile(base + "/foreign", widths: [0: 8, 1: 8], metadata: ["best_layer": "5"])
        Self.expectError([st("foreign"), "metadata 'best_layer' 5 is not one of the probes' layers [0, 1]"]) { _ = try ProbeSet.load(directory: base + "/foreign") }
        try Self.probesFile(base + "/widths", widths: [0: 8, 1: 4])
        Self.expectError([st("widths"), "layer1: weight [3, 4] and bias [3], expected [3, 8] and [3]"]) { _ = try ProbeSet.load(directory: base + "/widths") }
        try Self.probesFile(base + "/nan", widths: [0: 8, 1: 8], value: { l, i in l == 1 && i == 5 ? .infinity : 0.1 })
        Self.expectError([st("nan"), "layer 1: weight element 5 is inf; probe weights must be finite"]) { _ = try ProbeSet.load(directory: base + "/nan") }
        try Self.probesFile(base + "/one", widths: [0: 8], classes: 1, metadata: ["labels": "[\"a\"]"])
        Self.expectError([st("one"), "metadata 'labels' names 1 classes; a probe has at least 2"]) { _ = try ProbeSet.load(directory: base + "/one") }
        var two = ReadoutRecipe(template: "raw", suffix: "", systemPrompt: nil, maxTokens: 64, withEmbeddings: false, tokenizer: "sha256:0")
        two.hooks = ["mlp_out", "resid_post"]
        try Self.probesFile(base + "/hooks", widths: [0: 8, 1: 8], metadata: ["readout": two.json])
        Self.expectError([st("hooks"), "metadata 'readout' lists the hooks mlp_out,resid_post; probes are trained on one"]) { _ = try ProbeSet.load(directory: base + "/hooks") }
        two.hooks = ["mlp_out"]
        two.position = "middle"
        try Self.probesFile(base + "/position", widths: [0: 8, 1: 8], metadata: ["readout": two.json])
        Self.expectError([st("position"), "readout recipe: 'position' 'middle' is not one of last, mean, suffix-mean"]) { _ = try ProbeSet.load(directory: base + "/position") }
        try Self.probesFile(base + "/neg", widths: [0: 8], metadata: ["layers": "[-1]", "best_layer": "-1"])
        Self.expectError([st("neg"), "layer -1 is not a layer number"]) { _ = try ProbeSet.load(directory: base + "/neg") }
        try? FileManager.default.removeItem(atPath: base)
    }

    @Test("long fields: only a bounded tail is tokenized, with the same tokens as tokenizing everything")
    func longFields() throws {
        let tok = try LoadedModel.tokenizer(forModel: ExtractionTests.model)
        let renderer = PromptRenderer()
        // Varied words and whitespace runs, some non-ASCII.
        let words = ["the", "quick", "brown", "fox", "jumps", "über", "the", "lazy", "dog.", "\n\n", "Ça", "va?", "  ", "12345", "naïve"]
        var text = ""
        var i = 0
        while text.utf8.count < 200_000 { text += words[(i * 7 + i / 3) % words.count] + (i % 11 == 0 ? "  " : " "); i += 1 }
        for maxTokens in [8, 64, 500] {
            let full = try tok.encode(try renderer.render(text))
            let expected = [full[0]] + full[(full.count - maxTokens + 1)...]
            let got = try Extractor.promptTokens(.message(text), tokenizer: tok, renderer: renderer, maxTokens: maxTokens)
            #expect(got.truncated && got.ids == expected, "--max-tokens \(maxTokens)")
        }
        let short = try Extractor.promptTokens(.message("I am happy."), tokenizer: tok, renderer: renderer, maxTokens: 2048)
        let shortFull = try tok.encode(try renderer.render("I am happy."))
        #expect(!short.truncated && short.ids == shortFull)
        let conversation: DatasetRow.Content = .conversation([(role: "user", content: text), (role: "assistant", content: "ok"), (role: "user", content: text)])
        let fullConversation = try tok.encode(try renderer.render(messages: [ChatMessage(role: "user", content: text), ChatMessage(role: "assistant", content: "ok"), ChatMessage(role: "user", content: text)]))
        let c = try Extractor.promptTokens(conversation, tokenizer: tok, renderer: renderer, maxTokens: 64)
        #expect(c.ids == [fullConversation[0]] + fullConversation[(fullConversation.count - 63)...])

        // A 10 MB field: tokenizing it whole took 1.2–2.4 GB and seconds; the tail takes little of either.
        let huge = String(repeating: "a happy ending to a long day ", count: 10_000_000 / 29)
        var before = rusage(), after = rusage()
        getrusage(RUSAGE_SELF.rawValue, &before)
        let t0 = Date()
        let h = try Extractor.promptTokens(.message(huge), tokenizer: tok, renderer: renderer, maxTokens: 2048)
        getrusage(RUSAGE_SELF.rawValue, &after)
        #expect(h.truncated && h.ids.count == 2048)
        #expect(Date().timeIntervalSince(t0) < 5)
        #expect(after.ru_maxrss - before.ru_maxrss < 300_000, "peak RSS grew by \(after.ru_maxrss - before.ru_maxrss) KiB")
    }

    @Test("long fields with byte-level BPE: the tail's tokens equal tokenizing everything; BOS kept first only when the tokenizer adds one")
    func longFieldsBPE() throws {
        let words = ["the", "quick", "brown", "fox", "jumps", "über", "the", "lazy", "dog.", "\n\n", "Ça", "va?", "  ", "12345", "naïve", "<|im_end|>"]
        var text = ""
        var i = 0
        while text.utf8.count < 50_000 { text += words[(i * 7 + i / 3) % words.count] + (i % 11 == 0 ? "  " : " "); i += 1 }
        let renderer = PromptRenderer(template: .raw)
        for family in ["llama3", "qwen2"] {
            let tok = try Tokenizer(path: Paths.fixtures.appendingPathComponent("bpe/\(family)/tokenizer.json").path)
            #expect(tok.addsBOS == (family == "llama3"))
            let full = try tok.encode(text)
            for maxTokens in [8, 64, 500] {
                let expected = tok.addsBOS ? [full[0]] + full[(full.count - maxTokens + 1)...] : Array(full[(full.count - maxTokens)...])
                let got = try Extractor.promptTokens(.message(text), tokenizer: tok, renderer: renderer, maxTokens: maxTokens)
                #expect(got.truncated && got.ids == expected, "\(family) --max-tokens \(maxTokens)")
            }
        }
    }
}

/// Extraction's resume and lock, on a real (tiny) model run.
@Suite struct ExtractResumeTests {
    @Test("extract rerun after a listed shard was deleted: redone and said so; a second run on the worker fails naming the holder")
    func resumeAndLock() throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 20))
        var cfg = ExtractionConfig(modelPath: ExtractionTests.model, dataPath: dir + "/d.csv", outDir: dir + "/out")
        cfg.rowsPerShard = 7
        cfg.threads = 1
        _ = try Extractor.run(cfg)
        let shard1 = dir + "/out/" + Shard.fileName(worker: 0, index: 1)
        try FileManager.default.removeItem(atPath: shard1)
        var log: [String] = []
        let s = try Extractor.run(cfg, log: { log.append($0) })
        #expect(log.contains("warning: \(shard1) does not exist: redoing rows from 7 (2 shards dropped from the manifest)"), "\(log)")
        #expect(s.rows == 13 && s.rowsAlreadyDone == 7)
        let v = try ShardVerification.run(directory: dir + "/out")
        #expect(v.isComplete && v.rows == 20, "\(v.problems)")

        // Another process holds worker 0's lock (simulated by a second open file description in this one).
        let held = try ShardWriter.lock(directory: dir + "/out", worker: 0)
        do {
            _ = try Extractor.run(cfg)
            Issue.record("a second run on the same worker and directory was not refused")
        } catch {
            #expect(error.localizedDescription == "\(dir)/out/.lock-00000: another run writing worker 0's shards into \(dir)/out is already running in process \(getpid()) (it holds this lock); wait for it or stop it")
        }
        held.release()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
