import Foundation
import Model
import Quant
import Formats
import Testing

@Suite struct PromptFileTests {
    @Test func escapesAndLines() throws {
        let p = try PromptFile.parse("a\\nb\n  spaced  \n\ntab\\there\nback\\\\slash\n")
        #expect(p == ["a\nb", "  spaced  ", "", "tab\there", "back\\slash"])
        #expect(try PromptFile.parse("no newline") == ["no newline"])
        for s in ["line\\x", "end\\"] {
            #expect(throws: PromptFileError.self) { try PromptFile.parse("ok\n" + s) }
        }
        do { _ = try PromptFile.parse("ok\nbad\\q", file: "f.txt") } catch let e as PromptFileError {
            #expect(e.line == 2 && e.file == "f.txt")
        }
        for s in ["x\\y\n\tz", "\\\\n"] { #expect(try PromptFile.parse(PromptFile.escape(s)) == [s]) }
    }
}

@Suite struct ResidualsJobTests {
    @Test("the residuals output file holds the HF reference values under the documented names")
    func outputMatchesReference() throws {
        let name = "gqa-bf16"
        let m = try Fixtures.loadedModel(name)
        let ref = try SafeTensorsFile(path: Fixtures.reference(name))
        let raw = Fixtures.cases.enumerated().filter { $0.element.template == "raw" }
        let out = temporaryDirectory() + "/r.safetensors"
        try ResidualsJob.run(model: m, prompts: raw.map { $0.element.text! }, renderer: PromptRenderer(template: .raw),
                             options: CaptureOptions(positions: .last, embeddings: true, logits: true), outPath: out)
        let f = try SafeTensorsFile(path: out)
        #expect(f.metadata["format"] == "llamaprobe-residuals" && f.metadata["template"] == "raw")
        for (j, (i, c)) in raw.enumerated() {
            #expect(try f.integers("p\(j).tokens").map(Int32.init) == c.ids)
            #expect(try f.info("p\(j).resid_post").shape == [m.config.numHiddenLayers, m.config.hiddenSize])
            #expect(relativeError(try f.floats("p\(j).resid_post"), try ref.floats("p\(i).resid_post")) <= 1e-4)
            #expect(relativeError(try f.floats("p\(j).embed"), try ref.floats("p\(i).embed")) <= 1e-4)
            #expect(relativeError(try f.floats("p\(j).logits_last"), try ref.floats("p\(i).logits_last")) <= 1e-4)
        }
        // All positions: [layers, T, d].
        let out2 = temporaryDirectory() + "/all.safetensors"
        let short = raw.first { $0.element.name == "hello" }!
        try ResidualsJob.run(model: m, prompts: [short.element.text!], renderer: PromptRenderer(template: .raw),
                             options: CaptureOptions(positions: .all), outPath: out2)
        let g = try SafeTensorsFile(path: out2)
        #expect(try g.info("p0.resid_post").shape == [m.config.numHiddenLayers, short.element.ids.count, m.config.hiddenSize])
        #expect(relativeError(try g.floats("p0.resid_post"), try ref.floats("p\(short.offset).resid_post_all")) <= 1e-4)
    }
}

@Suite struct SynthTests {
    func tinyModel(dtype: QuantType.ID = .f32, seed: UInt64 = 7, layers: Int? = nil) throws -> String {
        var c = Preset.named("tiny")!.config
        if let layers { c.numHiddenLayers = layers }
        let dir = temporaryDirectory() + "/tiny-\(dtype.rawValue)"
        let tok = try Tokenizer.train(corpus: Fixtures.corpus, vocabSize: 512)
        try Synth.write(config: c, to: dir, seed: seed, dtype: dtype, tokenizer: tok, pool: ThreadPool(threads: 2))
        return dir
    }

    @Test("the tiny preset loads and keeps every layer's activations finite and non-trivial")
    func tinyIsSane() throws {
        let dir = try tinyModel()
        let m = try LoadedModel.load(path: dir, includeHead: true, threads: 2)
        #expect(m.tokenizer.vocabSize == 512)
        let ids = try m.tokenizer.encode(try PromptRenderer().render("I feel wonderful today, thanks for asking!"))
        #expect(ids.count > 10 && ids.allSatisfy { $0 < 512 })
        let r = try m.model.capture(ids, CaptureOptions(positions: .all, logits: true))
        let d = m.config.hiddenSize, T = ids.count
        var previous: [Float] = []
        for l in 0..<m.config.numHiddenLayers {
            let last = Array(r.residPost[(l * T * d + (T - 1) * d)..<(l * T * d + T * d)])
            let rms = (last.reduce(0) { $0 + $1 * $1 } / Float(d)).squareRoot()
            #expect(last.allSatisfy { $0.isFinite })
            #expect(rms > 0.1 && rms < 100, "layer \(l) rms \(rms)")
            if !previous.isEmpty { #expect(relativeError(last, previous) > 0.05, "layer \(l) barely changes the residual") }
            previous = last
        }
        // Different positions differ (attention and RoPE do something).
        #expect(relativeError(Array(r.residPost[0..<d]), Array(r.residPost[d..<(2 * d)])) > 0.05)
        #expect(r.logitsLast!.allSatisfy { $0.isFinite })
    }

    @Test("the presets of today's models have their config.json settings; each family's synthetic weights run")
    func familyPresets() throws {
        let l31 = try #require(Preset.named("llama-3.1-8b")?.config)
        #expect(l31.llama3Rope?.factor == 8 && l31.vocabSize == 128256 && l31.kvHeads == 8 && l31.intermediateSize == 14336)
        let l32 = try #require(Preset.named("llama-3.2-1b")?.config)
        #expect(l32.llama3Rope?.factor == 32 && l32.tiedEmbeddings && l32.headDimension == 64 && l32.numHiddenLayers == 16)
        let qw = try #require(Preset.named("qwen2.5-7b")?.config)
        #expect(qw.family == "qwen2" && qw.hasQKVBias && qw.attentionWindow == nil && qw.vocabSize == 152064 && qw.epsF32 == 1e-6)
        let mi = try #require(Preset.named("mistral-7b")?.config)
        #expect(mi.family == "mistral" && mi.attentionWindow == nil && mi.vocabSize == 32768 && mi.theta == 1e6)
        for p in Preset.all { try p.config.validate(file: p.name) }
        // Each family's settings on the tiny shape: the synthetic weights (Qwen2's biases too) give finite residuals.
        for base in [l31, qw, mi] {
            var c = Preset.named("tiny")!.config
            c.modelType = base.family; c.architectures = base.architectures; c.ropeScaling = base.ropeScaling
            let pool = ThreadPool(threads: 2)
            let w = LlamaWeights.synthetic(config: c, seed: 3, includeHead: true, quantized: true, pool: pool)
            #expect(w.layers.allSatisfy { ($0.qBias != nil) == (base.family == "qwen2") })
            let r = try LlamaModel(weights: w, pool: pool).capture([1, 5, 9, 200, 17], CaptureOptions(logits: true))
            #expect(r.residPost.allSatisfy(\.isFinite) && r.logitsLast!.allSatisfy(\.isFinite), "\(base.family)")
        }
    }

    @Test("synthetic weights stay finite and non-trivial 80 layers deep (the llama-2-70b depth)")
    func deep() throws {
        var c = Preset.named("tiny")!.config
        c.numHiddenLayers = 80
        let pool = ThreadPool(threads: 2)
        let m = LlamaModel(weights: LlamaWeights.synthetic(config: c, seed: 11, pool: pool), pool: pool)
        let ids: [Int32] = [1] + (0..<40).map { Int32(3 + ($0 * 37) % 1000) }
        let r = try m.capture(ids, CaptureOptions())
        let d = c.hiddenSize
        let rms = (0..<80).map { l in (r.residPost[(l * d)..<((l + 1) * d)].reduce(Float(0)) { $0 + $1 * $1 } / Float(d)).squareRoot() }
        #expect(rms.allSatisfy { $0.isFinite && $0 > 0.5 && $0 < 1000 }, "\(rms)")
        #expect(rms[79] > rms[0])
    }

    @Test("same seed, same bytes; bf16 stores the rounded f32 values")
    func deterministicAndDtypes() throws {
        let a = try tinyModel(seed: 3, layers: 1), b = try tinyModel(seed: 3, layers: 1)
        let fa = try Data(contentsOf: URL(fileURLWithPath: a + "/model.safetensors"))
        #expect(fa == (try Data(contentsOf: URL(fileURLWithPath: b + "/model.safetensors"))))
        let bf = try tinyModel(dtype: .bf16, seed: 3, layers: 1)
        let s32 = try SafeTensorsFile(path: a + "/model.safetensors"), s16 = try SafeTensorsFile(path: bf + "/model.safetensors")
        let name = "model.layers.0.mlp.down_proj.weight"
        #expect(try s16.info(name).dtype == .bf16)
        let x = try s32.floats(name), y = try s16.floats(name)
        #expect(zip(x, y).allSatisfy { bf16ToFloat(floatToBF16($0)) == $1 })
        #expect(try LlamaConfig.load(path: bf + "/config.json").storageDtype == "bfloat16")
        // In-memory synthetic weights are the same values.
        let c = try LlamaConfig.load(path: a + "/config.json")
        let w = LlamaWeights.synthetic(config: c, seed: 3, pool: ThreadPool(threads: 2))
        guard case .f32(let down) = w.layers[0].down else { Issue.record("not f32"); return }
        #expect(Array(UnsafeBufferPointer(start: down.pointer, count: down.rows * down.cols)) == x)
    }
}
