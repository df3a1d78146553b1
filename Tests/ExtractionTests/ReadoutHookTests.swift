import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats
import Testing

/// Issue 12, extraction: hook points, positions and layer subsets through extract, train and predict, and
/// against Hugging Face (Tests/fixtures/hooks/make_readout_fixtures.py).
@Suite struct ReadoutHookTests {
    static let hooksDir = Paths.fixtures.appendingPathComponent("hooks")
    static let rows = hooksDir.appendingPathComponent("readout_rows.jsonl").path
    static let allHooks = Hook.allCases

    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count else { return .infinity }
        var num: Float = 0, den: Float = 0
        for (x, y) in zip(a, b) { num = max(num, abs(x - y)); den = max(den, abs(y)) }
        return den > 0 ? num / den : num
    }

    @Test("the recipe's hook names are Model's Hook names, in the same order")
    func hookNames() {
        #expect(ReadoutRecipe.hookNames == Hook.allCases.map(\.rawValue))
    }

    @Test("every hook at every position rule through extract matches HF's forward hooks within 1e-4 (tokens and positions read identical)",
          arguments: ["gqa-bf16", "mha-f32", "gqa-f16-theta"])
    func matchesHF(model name: String) throws {
        let ref = try SafeTensorsFile(path: Self.hooksDir.appendingPathComponent("readout-\(name).safetensors").path)
        let maxTokens = try #require(ref.metadata["max_tokens"].flatMap { Int($0) })
        let m = try LoadedModel.load(path: Paths.model(name), threads: 1)
        let data = try Dataset(path: Self.rows)
        var worst: Float = 0
        defer { print("\(name): worst rel error over hooks × positions × rows × layers \(worst)") }
        for position in ReadoutRecipe.positions {
            let dir = tempDir("hf-\(name)-\(position)")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var cfg = ExtractionConfig(modelPath: Paths.model(name), dataPath: Self.rows, outDir: dir + "/out")
            cfg.threads = 1
            cfg.maxTokens = maxTokens
            cfg.hooks = Self.allHooks
            cfg.position = position
            let s = try Extractor.run(cfg)
            #expect(s.rows == 4 && s.truncated == 1)
            let sd = try ShardDirectory(path: dir + "/out")
            let recipe = try #require(sd.metadata.readout)
            #expect(recipe.position == position && recipe.hooks == Self.allHooks.map(\.rawValue))
            // The tokens and the positions read, as the Python reference chose them.
            for i in 0..<data.rows.count {
                let p = try recipe.prompt(try data.rows[i].get().content, tokenizer: m.tokenizer)
                #expect(p.ids == (try ref.integers("r\(i).tokens")).map(Int32.init), "row \(i)")
                #expect(p.positions == (try ref.integers("r\(i).\(position).positions")).map { Int($0) }, "row \(i) \(position)")
            }
            let L = m.config.numHiddenLayers, d = m.config.hiddenSize
            for h in Self.allHooks {
                var got: [Float] = []
                for path in sd.shardPaths { got += try Shard.read(path: path, hook: h.rawValue).residPost }
                let want = try ref.floats("\(position).\(h.rawValue)")   // [rows, layers, d]
                try #require(got.count == 4 * L * d && want.count == got.count)
                for r in 0..<4 {
                    for l in 0..<L {
                        let range = ((r * L + l) * d)..<((r * L + l + 1) * d)
                        let e = Self.relativeError(Array(got[range]), Array(want[range]))
                        worst = max(worst, e)
                        #expect(e <= 1e-4, "\(name) \(position) \(h.rawValue) row \(r) layer \(l): rel error \(e)")
                    }
                }
            }
        }
    }

    @Test("the positions differ: mean and suffix-mean are not the last token (the reference would catch a wrong rule)")
    func positionsAreDistinct() throws {
        let ref = try SafeTensorsFile(path: Self.hooksDir.appendingPathComponent("readout-mha-f32.safetensors").path)
        for a in ReadoutRecipe.positions {
            for b in ReadoutRecipe.positions where a < b {
                #expect(Self.relativeError(try ref.floats("\(a).resid_post"), try ref.floats("\(b).resid_post")) > 1e-2, "\(a) vs \(b)")
            }
        }
        // the message's tokens: not the template's [INST], not the suffix; the conversation's last user message only
        let m = try LoadedModel.load(path: Paths.model("mha-f32"), threads: 1)
        var r = ReadoutRecipe(renderer: PromptRenderer(), maxTokens: 2048, withEmbeddings: false, tokenizer: m.tokenizer)
        r.position = "mean"
        let p = try r.prompt(.message("  sad  "), tokenizer: m.tokenizer)
        let text = try m.tokenizer.decode(p.positions.map { p.ids[$0] })
        #expect(text == "sad", "\(text)")
        r.position = "suffix-mean"
        let s = try r.prompt(.message("sad"), tokenizer: m.tokenizer)
        #expect(try m.tokenizer.decode(s.positions.map { s.ids[$0] }) == PromptTemplate.defaultSuffix.dropFirst())
        #expect(s.positions.last == s.ids.count - 1)
    }

    @Test("mean and suffix-mean with byte-level BPE (llama3 with BOS, qwen2 without) and with special-token text in a conversation: the tokens read spell the message and the suffix")
    func positionsOtherTokenizers() throws {
        let message = "Ça va?  I'm naïve — 12345 <|im_end|> done."
        for family in ["llama3", "qwen2"] {
            let tok = try Tokenizer(path: Paths.fixtures.appendingPathComponent("bpe/\(family)/tokenizer.json").path)
            var r = ReadoutRecipe(renderer: PromptRenderer(template: .raw, suffix: " So, the feeling is"), maxTokens: 4096,
                                  withEmbeddings: false, tokenizer: tok)
            r.position = "mean"
            let p = try r.prompt(.message(message), tokenizer: tok)
            #expect(try tok.decode(p.positions.map { p.ids[$0] }) == message, "\(family)")
            r.position = "suffix-mean"
            let s = try r.prompt(.message(message), tokenizer: tok)
            #expect(try tok.decode(s.positions.map { s.ids[$0] }) == " So, the feeling is", "\(family)")
        }
        // SentencePiece, a conversation: the literal <s> and </s> of earlier turns are tokens of the template.
        let m = try LoadedModel.load(path: Paths.model("gqa-bf16"), threads: 1)
        var r = ReadoutRecipe(renderer: PromptRenderer(), maxTokens: 4096, withEmbeddings: false, tokenizer: m.tokenizer)
        r.position = "mean"
        let turns: [(role: String, content: String)] = [("user", "first"), ("assistant", "reply"), ("user", " last one ")]
        let p = try r.prompt(.conversation(turns), tokenizer: m.tokenizer)
        #expect(try m.tokenizer.decode(p.positions.map { p.ids[$0] }) == "last one")
    }

    @Test("position rules at the edges: nothing of the message left after truncation is a row error (skippable); an empty suffix is refused")
    func positionEdges() throws {
        let m = try LoadedModel.load(path: Paths.model("gqa-bf16"), threads: 1)
        var r = ReadoutRecipe(renderer: PromptRenderer(), maxTokens: 80, withEmbeddings: false, tokenizer: m.tokenizer)
        r.position = "mean"
        let long = String(repeating: "word ", count: 200)
        let kept = try r.prompt(.message(long), tokenizer: m.tokenizer)
        #expect(kept.truncated && !kept.positions.isEmpty && kept.positions.first == 1, "the kept message tokens follow BOS")
        r.maxTokens = 40   // the suffix and [/INST] take every kept token (the fixture tokenizer's pieces are short)
        do { _ = try r.prompt(.message(long), tokenizer: m.tokenizer); Issue.record("accepted") } catch {
            #expect(error.localizedDescription.contains("--position mean: no token of the message is left after cutting the prompt to --max-tokens 40"), "\(error)")
        }
        var raw = ReadoutRecipe(renderer: PromptRenderer(template: .raw), maxTokens: 64, withEmbeddings: false, tokenizer: m.tokenizer)
        raw.position = "suffix-mean"
        do { _ = try raw.prompt(.message("hi"), tokenizer: m.tokenizer); Issue.record("accepted") } catch {
            #expect(error.localizedDescription.contains("--position suffix-mean: the readout suffix is empty"), "\(error)")
        }
        // extract: rows whose message is cut away (here every row: the template's end and the suffix alone take
        // more than 39 tokens) are skipped with --on-error skip and recorded; the default fails naming the row
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        writeFile(dir + "/d.csv", "message,label\nshort,happy\n\"\(long)\",sad\n")
        var cfg = fixtureConfig(dir + "/d.csv", dir + "/out")
        cfg.position = "mean"
        cfg.maxTokens = 40
        cfg.onError = .skip
        let s = try Extractor.run(cfg)
        #expect(s.rows == 0 && s.skipped == 2 && s.skippedRows.allSatisfy { $0.contains("no token of the message is left") }, "\(s.skippedRows)")
        #expect(try ShardDirectory(path: dir + "/out").manifests[0].skipped.map(\.row) == [0, 1])
        cfg.onError = .fail
        cfg.outDir = dir + "/out2"
        do { _ = try Extractor.run(cfg); Issue.record("accepted") } catch {
            #expect(error.localizedDescription.contains("row 0") && error.localizedDescription.contains("no token of the message is left"), "\(error)")
        }
    }

    @Test("extract refuses --with-embeddings with other hooks and layers outside the model, naming them")
    func extractErrors() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        writeFile(dir + "/d.csv", demoCSV(rows: 3))
        var cfg = fixtureConfig(dir + "/d.csv", dir + "/out")
        cfg.withEmbeddings = true
        cfg.hooks = [.residPost, .mlpOut]
        #expect(throws: ExtractionError("--with-embeddings stores the embedding output as layer 0 of resid_post; it cannot be combined with --hooks resid_post,mlp_out (resid_pre of layer 0 is the embedding output)")) {
            _ = try Extractor.run(cfg)
        }
        cfg.hooks = [.residPost]
        cfg.layers = [0, 4]
        #expect(throws: ExtractionError("--layers: layer 4 is not in 0...3 (the model's 4 hidden states, 0 = the embedding output)")) {
            _ = try Extractor.run(cfg)
        }
    }

    @Test("--layers keeps a subset equal to the full run's layers; train names the probes by them; predict applies the probe of layer L to layer L, reading the recorded hook and position")
    func layersTrainPredict() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        writeFile(dir + "/d.csv", demoCSV(rows: 40))
        var full = fixtureConfig(dir + "/d.csv", dir + "/full")
        full.withEmbeddings = true
        _ = try Extractor.run(full)
        var sub = fixtureConfig(dir + "/d.csv", dir + "/sub")
        sub.withEmbeddings = true
        sub.layers = [3, 0, 2]
        _ = try Extractor.run(sub)
        let a = try ShardDirectory(path: dir + "/full"), b = try ShardDirectory(path: dir + "/sub")
        // Without --hooks/--position/--layers a shard is laid out as before they existed: the four tensors in
        // this order, and a readout without 'hooks'.
        let content = try Zstd.decompress(try Files.read(a.shardPaths[0]))
        let n = content.prefix(8).enumerated().reduce(0) { $0 | Int($1.1) << (8 * $1.0) }
        let header = String(decoding: content[8..<(8 + n)], as: UTF8.self)
        let names = ["\"label\"", "\"row\"", "\"n_tokens\"", "\"resid_post\""].map { header.range(of: $0)?.lowerBound }
        #expect(names.allSatisfy { $0 != nil } && names.map { $0! } == names.map { $0! }.sorted(), "\(header)")
        for hook in ["resid_pre", "attn_out", "resid_mid", "mlp_out"] { #expect(!header.contains("\"\(hook)\"")) }
        #expect(!header.contains("hooks") && a.metadata.readout?.hooks == nil && a.metadata.readout?.position == "last")
        #expect(b.metadata.layers == [0, 2, 3])
        for (pa, pb) in zip(a.shardPaths, b.shardPaths) {
            let x = try Shard.read(path: pa), y = try Shard.read(path: pb)
            for i in 0..<x.count {
                for (k, l) in [0, 2, 3].enumerated() {
                    #expect(Array(y.residPost[((i * 3 + k) * 64)..<((i * 3 + k + 1) * 64)]) == Array(x.residPost[((i * 4 + l) * 64)..<((i * 4 + l + 1) * 64)]))
                }
            }
        }

        // Several hooks read at the message's mean, a subset of layers; train on mlp_out; predict reads the same.
        var hooked = fixtureConfig(dir + "/d.csv", dir + "/hooked")
        hooked.hooks = [.residPost, .mlpOut]
        hooked.position = "mean"
        hooked.layers = [1, 2]
        _ = try Extractor.run(hooked)
        var o = TrainJobOptions(shardDirectories: [dir + "/hooked"], outDirectory: dir + "/probes")
        o.hook = "mlp_out"
        o.config.epochs = 3
        o.config.batchSize = 8
        let result = try TrainJob.run(o)
        #expect(result.outcomes.map(\.layer) == [1, 2])
        let summary = try String(contentsOfFile: dir + "/probes/probe_training_summary.md", encoding: .utf8)
        #expect(summary.contains("- Read: hook `mlp_out` at position `mean` (of the stored `resid_post`, `mlp_out`)."), "\(summary.prefix(600))")
        let probes = try ProbeSet.load(directory: dir + "/probes")
        #expect(probes.probes.keys.sorted() == [1, 2] && probes.readout?.hooks == ["mlp_out"] && probes.readout?.position == "mean")
        let m = try LoadedModel.load(path: ExtractionTests.model, threads: 1)
        let data = try Dataset(path: dir + "/d.csv")
        let (recipe, warnings) = try Predictor.readout(probes: probes, flags: ReadoutFlags(), tokenizer: m.tokenizer)
        #expect(warnings.isEmpty && recipe == probes.readout)
        // --template auto on this model (no chat template) is the recorded llama2-chat: not a contradiction.
        let auto = try Predictor.readout(probes: probes, flags: ReadoutFlags(template: "auto"), tokenizer: m.tokenizer, chat: m.chat)
        #expect(auto.warnings.isEmpty && auto.recipe == probes.readout)
        #expect(throws: ExtractionError.self) { try Predictor.readout(probes: probes, flags: ReadoutFlags(template: "llama3"), tokenizer: m.tokenizer, chat: m.chat) }
        let hd = try ShardDirectory(path: dir + "/hooked")
        for path in hd.shardPaths {
            let stored = try Shard.read(path: path, hook: "mlp_out")
            let contents = try (0..<stored.count).map { try data.rows[Int(stored.rows[$0])].get().content }
            let predicted = try Predictor.run(model: m, probes: probes, readout: recipe, messages: contents, layers: [1, 2])
            for i in 0..<stored.count {
                for (k, l) in [1, 2].enumerated() {
                    let v = Array(stored.residPost[((i * 2 + k) * 64)..<((i * 2 + k + 1) * 64)])
                    let want = v.withUnsafeBufferPointer { probes.probabilities(layer: l, residual: $0.baseAddress!) }
                    #expect(predicted[i][l] == want, "row \(stored.rows[i]) layer \(l)")
                }
            }
        }
    }
}

/// The flags through the built command line.
@Suite(.serialized) struct ReadoutHookCLITests {
    @Test("extract --hooks --position --layers, shards info/export, train --hook (and its error), predict with the recorded readout; --help names each flag")
    func commandLine() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        writeFile(dir + "/d.csv", demoCSV(rows: 40))
        let model = Paths.model("gqa-bf16"), shards = dir + "/shards", probes = dir + "/probes"
        try llamaprobeOK(["extract", "--model", model, "--data", dir + "/d.csv", "--out", shards, "--hooks", "mlp_out,resid_post",
                                       "--position", "suffix-mean", "--layers", "1-2", "--threads", "1"])
        let info = try llamaprobeOK(["shards", "info", shards])
        #expect(info.out.contains("layout: mlp_out, resid_post [n, 2, 64] F32, layers 1,2") && info.out.contains("position: suffix-mean"), "\(info.out)")
        try llamaprobeOK(["shards", "export", shards, "--format", "npy", "--out", dir + "/npy"])
        #expect(FileManager.default.fileExists(atPath: dir + "/npy/mlp_out.npy") && FileManager.default.fileExists(atPath: dir + "/npy/resid_post.npy"))

        let bad = try llamaprobe(["train", "--shards", shards, "--out", probes, "--hook", "attn_out", "--epochs", "2"])
        #expect(bad.status != 0 && bad.err.contains("--hook attn_out: the shards hold no 'attn_out' activations; available: mlp_out, resid_post"), "\(bad.err)")
        let badHooks = try llamaprobe(["extract", "--model", model, "--data", dir + "/d.csv", "--out", dir + "/x", "--hooks", "resid_post,hook_mlp_out"])
        #expect(badHooks.status != 0 && badHooks.err.contains("unknown hook 'hook_mlp_out'"), "\(badHooks.err)")
        let badPosition = try llamaprobe(["extract", "--model", model, "--data", dir + "/d.csv", "--out", dir + "/x", "--position", "first"])
        #expect(badPosition.status != 0 && badPosition.err.contains("--position must be one of last, mean, suffix-mean"), "\(badPosition.err)")

        try llamaprobeOK(["train", "--shards", shards, "--out", probes, "--hook", "mlp_out", "--epochs", "4", "--val-every", "2"])
        try llamaprobeOK(["train", "--shards", shards, "--out", dir + "/post", "--epochs", "4", "--val-every", "2"])
        let recorded = try #require(try ReadoutRecipe.File.read(directory: probes)?.readout)
        #expect(recorded.hooks == ["mlp_out"] && recorded.position == "suffix-mean")
        let predict = ["predict", "--model", model, "--data", dir + "/d.csv", "--layer", "all", "--json", "--threads", "1"]
        let a = try llamaprobeOK(predict + ["--probes", probes])
        let b = try llamaprobeOK(predict + ["--probes", dir + "/post"])
        #expect(!a.out.isEmpty && a.out != b.out && !a.err.contains("warning"), "\(a.err)")

        // One hook alone, not resid_post: verify and export read it; train's default is refused naming it.
        let only = dir + "/only"
        try llamaprobeOK(["extract", "--model", model, "--data", dir + "/d.csv", "--out", only, "--hooks", "attn_out", "--threads", "1"])
        #expect(try llamaprobeOK(["shards", "verify", only]).out.contains("complete"))
        try llamaprobeOK(["shards", "export", only, "--format", "safetensors", "--out", dir + "/only.safetensors"])
        #expect(try SafeTensorsFile(path: dir + "/only.safetensors").floats("attn_out").count == 40 * 3 * 64)
        let noPost = try llamaprobe(["train", "--shards", only, "--out", dir + "/x", "--epochs", "2"])
        #expect(noPost.status != 0 && noPost.err.contains("--hook resid_post: the shards hold no 'resid_post' activations; available: attn_out"), "\(noPost.err)")

        let extractHelp = try llamaprobeOK(["extract", "--help"]).out
        for flag in ["--hooks <list>", "--position <last|mean|suffix-mean>", "--layers <all|list>"] {
            #expect(extractHelp.contains(flag), "extract --help lacks \(flag)")
        }
        #expect(try llamaprobeOK(["train", "--help"]).out.contains("--hook <name>"))
    }
}
