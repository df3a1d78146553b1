import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats
import Testing

/// Runs the built llamaprobe; stdout and stderr go through files (no pipe can fill up and block).
func llamaprobe(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
    let dir = tempDir("run")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    FileManager.default.createFile(atPath: dir + "/o", contents: nil)
    FileManager.default.createFile(atPath: dir + "/e", contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: Paths.llamaprobe)
    p.arguments = args
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/o"))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/e"))
    try p.run()
    p.waitUntilExit()
    #expect(p.terminationReason == .exit, "llamaprobe \(args) crashed")
    return (p.terminationStatus, try String(contentsOfFile: dir + "/o", encoding: .utf8), try String(contentsOfFile: dir + "/e", encoding: .utf8))
}

/// `llamaprobe args`, required to succeed (the failure names the command and its stderr).
@discardableResult
func llamaprobeOK(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
    let r = try llamaprobe(args)
    try #require(r.status == 0, "llamaprobe \(args.joined(separator: " ")): \(r.err)")
    return r
}

/// Issue 10: the readout recipe and the model's fingerprint travel with shards and probes.
@Suite(.serialized) struct ReadoutProvenanceTests {
    static let suffix = " Overall, the sentiment of this review is"
    static let system = "You are a careful reader of reviews."


    @Test("provenance: extract with --suffix and --system-prompt, train, predict without flags = with flags; a contradicting flag is refused, --override-readout warns")
    func provenance() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        writeFile(dir + "/d.csv", demoCSV(rows: 40))
        let model = dir + "/m", shards = dir + "/shards", probes = dir + "/probes"
        try llamaprobeOK(["synth", "--preset", "tiny", "--out", model])
        try llamaprobeOK(["extract", "--model", model, "--data", dir + "/d.csv", "--out", shards, "--suffix", Self.suffix,
                     "--system-prompt", Self.system, "--max-tokens", "512", "--threads", "1"])
        // recorded in every shard and manifest
        let sd = try ShardDirectory(path: shards)
        let recipe = try #require(sd.metadata.readout)
        #expect(recipe.suffix == Self.suffix && recipe.systemPrompt == Self.system && recipe.maxTokens == 512
                && recipe.template == "llama2-chat" && recipe.position == "last" && recipe.tokenizer.hasPrefix("sha256:"))
        #expect(try Shard.read(path: sd.shardPaths[0]).metadata.readout == recipe)
        #expect(ModelIdentity.isFingerprint(sd.metadata.model) && sd.metadata.quantization == "F32")
        // extract refuses to add rows read another way (or stored in another dtype) to the directory
        let again = try llamaprobe(["extract", "--model", model, "--data", dir + "/d.csv", "--out", shards, "--suffix", " Other",
                                    "--system-prompt", Self.system, "--max-tokens", "512", "--threads", "1"])
        #expect(again.status != 0 && again.err.contains("readout --suffix \"\(Self.suffix)\" vs \" Other\""), "\(again.err)")
        let f16 = try llamaprobe(["extract", "--model", model, "--data", dir + "/d.csv", "--out", shards, "--suffix", Self.suffix,
                                  "--system-prompt", Self.system, "--max-tokens", "512", "--threads", "1", "--dtype", "f16"])
        #expect(f16.status != 0 && f16.err.contains("dtype"), "\(f16.err)")
        try llamaprobeOK(["train", "--shards", shards, "--out", probes, "--epochs", "4", "--val-every", "2"])
        // copied into probes.safetensors and readout.json
        let st = try SafeTensorsFile(path: probes + "/probes.safetensors")
        #expect(try st.metadata["readout"].map { try ReadoutRecipe.parse($0, file: "") } == recipe)
        #expect(try ReadoutRecipe.File.read(directory: probes)?.readout == recipe)

        let base = ["predict", "--model", model, "--probes", probes, "--data", dir + "/d.csv", "--layer", "all", "--json", "--threads", "1"]
        let bare = try llamaprobeOK(base)
        let flagged = try llamaprobeOK(base + ["--suffix", Self.suffix, "--system-prompt", Self.system, "--max-tokens", "512", "--template", "llama2-chat"])
        #expect(!bare.out.isEmpty && bare.out == flagged.out, "predict without flags must read as extraction did")
        #expect(!bare.err.contains("warning"), "\(bare.err)")
        // The default readout (what predict used before) gives other numbers: the recipe is what made them equal.
        let other = try llamaprobe(base + ["--suffix", " I think the emotional state of this user is"])
        #expect(other.status == 1 && other.err.contains("--suffix \" I think the emotional state of this user is\" contradicts the recorded \"\(Self.suffix)\"")
                && other.err.contains("--override-readout"), "\(other.err)")
        let noSystem = try llamaprobe(base + ["--max-tokens", "100"])
        #expect(noSystem.status == 1 && noSystem.err.contains("--max-tokens 100 contradicts the recorded 512"), "\(noSystem.err)")
        let overridden = try llamaprobeOK(base + ["--suffix", " I think the emotional state of this user is", "--override-readout"])
        #expect(overridden.err.contains("warning: --override-readout: --suffix") && overridden.out != bare.out, "\(overridden.err)")

        // .pth files with readout.json read the same way; without it, a warning names the missing recipe.
        let pth = dir + "/pth"
        try FileManager.default.createDirectory(atPath: pth, withIntermediateDirectories: true)
        for f in try FileManager.default.contentsOfDirectory(atPath: probes) where f.hasSuffix(".pth") || f.hasSuffix(".csv") || f == "readout.json" {
            try FileManager.default.copyItem(atPath: probes + "/" + f, toPath: pth + "/" + f)
        }
        var viaPth = base
        viaPth[4] = pth
        let p = try llamaprobeOK(viaPth)
        #expect(p.out == bare.out && !p.err.contains("warning"), "\(p.err)")
        try FileManager.default.removeItem(atPath: pth + "/readout.json")
        let legacy = try llamaprobeOK(viaPth)
        #expect(legacy.err.contains("record no readout recipe") && legacy.out != bare.out, "\(legacy.err)")
    }

    @Test("fingerprint: two synth seeds differ; an HF directory and the Q8_0 GGUF quantized from it agree; predict refuses another checkpoint")
    func fingerprints() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = dir + "/a", b = dir + "/b", gguf = dir + "/a.Q8_0.gguf"
        try llamaprobeOK(["synth", "--preset", "tiny", "--seed", "1", "--dtype", "bf16", "--out", a])
        try llamaprobeOK(["synth", "--preset", "tiny", "--seed", "2", "--dtype", "bf16", "--out", b])
        try llamaprobeOK(["quantize", "--model", a, "--out", gguf, "--threads", "1"])
        let ma = try LoadedModel.load(path: a, threads: 1), mb = try LoadedModel.load(path: b, threads: 1)
        let mq = try LoadedModel.load(path: gguf, threads: 1)
        #expect(ma.fingerprint.hasPrefix(ModelIdentity.fingerprintPrefix) && ma.fingerprint.count == ModelIdentity.fingerprintPrefix.count + 64)
        #expect(ma.fingerprint != mb.fingerprint, "two seeds, same shapes: different fingerprints")
        #expect(ma.fingerprint == mq.fingerprint, "HF bf16 directory vs its Q8_0 GGUF")
        #expect(try LoadedModel.load(path: gguf, threads: 3).fingerprint == mq.fingerprint, "the thread count changes nothing")

        // A merged LoRA touches projections only (norms unchanged): one q_proj weight moved, other fingerprint.
        // Moving it by less than half a Q8_0 step of its block changes nothing a Q8_0 model computes: same one.
        func edited(_ name: String, _ change: (Float) -> Float) throws -> String {
            let c = dir + "/edit-\(UUID().uuidString.prefix(6))"
            try FileManager.default.copyItem(atPath: a, toPath: c)
            let files = try FileManager.default.contentsOfDirectory(atPath: c).filter { $0.hasSuffix(".safetensors") }
            for f in files {
                guard let t = try SafeTensorsFile(path: c + "/" + f).tensors[name] else { continue }
                #expect(t.dtype == .bf16)
                var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: c + "/" + f)))
                let o = t.fileOffset + 2 * 5   // element 5 of row 0
                let old = Float(bitPattern: UInt32(bytes[o]) << 16 | UInt32(bytes[o + 1]) << 24)
                let new = change(old).bitPattern
                bytes[o] = UInt8(truncatingIfNeeded: new >> 16); bytes[o + 1] = UInt8(truncatingIfNeeded: new >> 24)
                try Data(bytes).write(to: URL(fileURLWithPath: c + "/" + f))
            }
            return try LoadedModel.load(path: c, threads: 2).fingerprint
        }
        #expect(try edited("model.layers.1.self_attn.q_proj.weight") { $0 + 0.05 } != ma.fingerprint, "a changed q_proj weight")
        #expect(try edited("model.layers.0.mlp.down_proj.weight") { -$0 } != ma.fingerprint, "a changed down_proj weight")
        #expect(try edited("model.embed_tokens.weight") { $0 * 2 + 0.01 } != ma.fingerprint, "a changed embedding")
        #expect(try edited("model.layers.1.self_attn.q_proj.weight") { $0 } == ma.fingerprint, "an unchanged copy")
        #expect(ma.quantization == "BF16" && mq.quantization == "Q8_0")
        #expect(ReadoutRecipe.fingerprint(of: ma.tokenizer) == ReadoutRecipe.fingerprint(of: mq.tokenizer), "tokenizer.model vs the GGUF vocabulary")

        // residuals goes through the same recipe and records it with the fingerprint.
        writeFile(dir + "/p.txt", "hello there\n")
        try llamaprobeOK(["residuals", "--model", gguf, "--prompts", dir + "/p.txt", "--out", dir + "/r.safetensors", "--threads", "1"])
        let rf = try SafeTensorsFile(path: dir + "/r.safetensors")
        #expect(rf.metadata["model_fingerprint"] == ma.fingerprint && rf.metadata["quantization"] == "Q8_0")
        let rr = try ReadoutRecipe.parse(try #require(rf.metadata["readout"]), file: "r.safetensors")
        #expect(rr.suffix == PromptTemplate.defaultSuffix && rr.template == "llama2-chat" && rr.tokenizer == ReadoutRecipe.fingerprint(of: ma.tokenizer))
        let expectedIDs = try rr.tokens(.message("hello there"), tokenizer: mq.tokenizer).ids
        #expect(try rf.integers("p0.tokens") == expectedIDs.map(Int64.init))

        // predict: probes of model a on model b refused naming both; the GGUF of a: one line, quantization only.
        writeFile(dir + "/d.csv", demoCSV(rows: 40))
        try llamaprobeOK(["extract", "--model", a, "--data", dir + "/d.csv", "--out", dir + "/shards", "--threads", "1"])
        try llamaprobeOK(["train", "--shards", dir + "/shards", "--out", dir + "/probes", "--epochs", "2"])
        let refused = try llamaprobe(["predict", "--model", b, "--probes", dir + "/probes", "--threads", "1", "hi"])
        #expect(refused.status == 1 && refused.err.contains(ma.fingerprint) && refused.err.contains(mb.fingerprint)
                && refused.err.contains("--allow-other-model"), "\(refused.err)")
        let allowed = try llamaprobeOK(["predict", "--model", b, "--probes", dir + "/probes", "--threads", "1", "--allow-other-model", "hi"])
        #expect(allowed.err.contains("warning: --allow-other-model"), "\(allowed.err)")
        let quantized = try llamaprobeOK(["predict", "--model", gguf, "--probes", dir + "/probes", "--threads", "1", "hi"])
        let lines = quantized.err.split(separator: "\n").filter { $0.contains("only the quantization differs") }
        #expect(lines.count == 1 && lines[0].contains("BF16") && lines[0].contains("Q8_0"), "\(quantized.err)")

        // extract: worker 1/2 with model b into the directory worker 0/2 filled with model a is refused.
        try llamaprobeOK(["extract", "--model", a, "--data", dir + "/d.csv", "--out", dir + "/mixed", "--worker", "0/2", "--threads", "1"])
        let mixed = try llamaprobe(["extract", "--model", b, "--data", dir + "/d.csv", "--out", dir + "/mixed", "--worker", "1/2", "--threads", "1"])
        #expect(mixed.status != 0 && mixed.err.contains("model fingerprint '\(ma.fingerprint)' vs '\(mb.fingerprint)'"), "\(mixed.err)")
        // shards verify reports a directory mixed by hand (worker 1 extracted elsewhere with b, copied in).
        try llamaprobeOK(["extract", "--model", b, "--data", dir + "/d.csv", "--out", dir + "/other", "--worker", "1/2", "--threads", "1"])
        for f in try FileManager.default.contentsOfDirectory(atPath: dir + "/other") where f.contains("00001") && !f.hasPrefix(".") {
            try FileManager.default.copyItem(atPath: dir + "/other/" + f, toPath: dir + "/mixed/" + f)
        }
        let verify = try llamaprobe(["shards", "verify", dir + "/mixed"])
        #expect(verify.status != 0 && verify.err.contains("workers disagree") && verify.err.contains("model fingerprint"), "\(verify.out)\(verify.err)")
    }

    @Test("imported activations carry an unknown readout: predict asks for the readout flags")
    func importedAskForReadout() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = dir + "/m"
        try llamaprobeOK(["synth", "--preset", "tiny", "--out", model])
        let c = try LlamaConfig.load(path: model + "/config.json")
        let n = 24, layers = c.numHiddenLayers, d = c.hiddenSize
        var rng = SystemRandomNumberGenerator()
        let acts = (0..<(n * layers * d)).map { _ in Float.random(in: -1...1, using: &rng) }
        let labels = (0..<n).map { Int64($0 % 2) }
        let bytes = acts.withUnsafeBytes { a in labels.withUnsafeBytes { l in
            SafeTensors.encode([(.init("acts", .f32, [n, layers, d]), a), (.init("labels", .i64, [n]), l)], metadata: [:])
        } }
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/acts.safetensors"))
        try llamaprobeOK(["shards", "import", "--activations", dir + "/acts.safetensors", "--key", "acts", "--label-key", "labels",
                     "--label-names", "neg,pos", "--out", dir + "/shards"])
        #expect(try ShardDirectory(path: dir + "/shards").metadata.readout == nil)
        let trained = try llamaprobeOK(["train", "--shards", dir + "/shards", "--out", dir + "/probes", "--epochs", "2"])
        #expect(trained.err.contains("warning: unknown readout (imported activations)"), "\(trained.err)")
        let asked = try llamaprobe(["predict", "--model", model, "--probes", dir + "/probes", "--threads", "1", "hi"])
        #expect(asked.status == 1 && asked.err.contains("imported activations (unknown readout)") && asked.err.contains("--template"), "\(asked.err)")
        let given = try llamaprobeOK(["predict", "--model", model, "--probes", dir + "/probes", "--threads", "1", "--template", "raw", "hi"])
        #expect(given.out.contains("layer"), "\(given.out)")
    }

    @Test("shard metadata without a readout recipe (written before it was recorded) reads as unknown and says so")
    func olderShardsReadAsUnknown() throws {
        let meta = ShardMetadata(model: "sha256:0123456789abcdef01234567", labels: ["a", "b"], template: "llama2-chat", suffix: " x",
                                 systemPrompt: "", layers: [0, 1], withEmbeddings: false, dtype: .f32, dModel: 4)
        let rows: [Float] = Array(repeating: 0.5, count: 2 * 2 * 4)
        let z = try rows.withUnsafeBytes { try Shard.encode(metadata: meta, activations: [$0], labels: [0, 1], rows: [0, 1], nTokens: [3, 3]) }
        let path = tempDir() + "/" + Shard.fileName(worker: 0, index: 0)
        try Data(z).write(to: URL(fileURLWithPath: path))
        let back = try Shard.read(path: path)
        #expect(back.metadata.readout == nil && back.metadata.quantization == nil && back.metadata == meta)
        #expect(back.metadata.readoutDescription.contains("unknown readout (shards written before llamaprobe recorded the readout recipe)"))
        var withRecipe = meta
        withRecipe.readout = ReadoutRecipe(template: "llama2-chat", suffix: " x", systemPrompt: nil, maxTokens: 2048, withEmbeddings: false, tokenizer: "sha256:00")
        #expect(ShardMetadata.difference(meta, withRecipe)?.contains("unknown readout") == true)

        // A directory written before the recipe was recorded is not resumed by an extraction that records one.
        let out = tempDir("older")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let w = try ShardWriter(directory: out, worker: 0, workers: 1, metadata: meta, rowsPerShard: 4, config: ["rows_total": "2"])
        try rows.withUnsafeBufferPointer { try w.append(row: 0, label: 0, nTokens: 3, activations: $0.baseAddress!) }
        try w.finish()
        #expect(throws: ShardError.self) { try ShardWriter(directory: out, worker: 0, workers: 1, metadata: withRecipe, rowsPerShard: 4, config: ["rows_total": "2"]) }
        do { _ = try ShardWriter(directory: out, worker: 0, workers: 1, metadata: withRecipe, rowsPerShard: 4, config: ["rows_total": "2"]) } catch let e as ShardError {
            #expect(e.reason.contains("written by an older llamaprobe (its shards record no readout recipe"), "\(e)")
        }
        #expect(try ShardDirectory(path: out).metadata.readout == nil)
    }
}
