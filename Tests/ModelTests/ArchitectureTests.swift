import Foundation
import Model
import Quant
import Formats
import Testing

/// Llama-3.x (llama3 rope scaling), Qwen2 (q/k/v biases, tied embeddings, an ignored window) and Mistral
/// (explicit head_dim, sliding_window) against Hugging Face float32 (Tests/fixtures/make_arch_fixtures.py).
@Suite struct ArchitectureTests {
    static let models = ["llama3-rope", "qwen2-bias", "mistral-window"]
    static let tolerance: Float = 1e-4

    static func reference(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: Fixtures.root.appendingPathComponent("references/arch-\(name).safetensors").path)
    }

    /// resid_post of every layer at every position and the last logits, against the reference; worst rel errors.
    static func errors(_ model: LlamaModel, _ ref: SafeTensorsFile) throws -> (resid: Float, logits: Float) {
        var worst: (Float, Float) = (0, 0)
        var i = 0
        while ref.tensors["p\(i).tokens"] != nil {
            let ids = try ref.integers("p\(i).tokens").map(Int32.init)
            let all = try model.capture(ids, CaptureOptions(positions: .all))
            let last = try model.capture(ids, CaptureOptions(positions: .last, logits: true))
            worst.0 = max(worst.0, relativeError(all.residPost, try ref.floats("p\(i).resid_post_all")))
            worst.1 = max(worst.1, relativeError(last.logitsLast!, try ref.floats("p\(i).logits_last")))
            i += 1
        }
        #expect(i == 3)
        return worst
    }

    /// A copy of a fixture directory with its config.json edited.
    static func edited(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
        let dir = temporaryDirectory(name) + "/" + name
        try FileManager.default.copyItem(atPath: Fixtures.model(name), toPath: dir)
        let path = dir + "/config.json"
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: path))
        return dir
    }

    @Test("residuals and logits match HF float32 (f32 and bf16 checkpoints)", arguments: models + models.map { $0 + "-bf16" })
    func matchesHF(name: String) throws {
        let m = try Fixtures.loadedModel(name)
        let e = try Self.errors(m.model, try Self.reference(name))
        print("\(name): worst resid_post rel error \(e.resid), logits \(e.logits)")
        #expect(e.resid <= Self.tolerance)
        #expect(e.logits <= Self.tolerance)
    }

    @Test("the configs are read as their families")
    func configs() throws {
        let l = try Fixtures.loadedModel("llama3-rope").config
        #expect(l.llama3Rope == LlamaConfig.Llama3Rope(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64))
        // The three bands are populated: kept (i = 0), smoothed (i = 1, 2), divided by 8 (i ≥ 3).
        let inv = l.ropeInverseFrequencies, base = (0..<8).map { 1 / powf(10000, Float(2 * $0) / 16) }
        #expect(inv[0] == base[0])
        #expect(inv[1] < base[1] && inv[1] > base[1] / 8 && inv[2] < base[2] && inv[2] > base[2] / 8)
        #expect(inv[3] == base[3] / 8 && inv[7] == base[7] / 8)
        let q = try Fixtures.loadedModel("qwen2-bias").config
        #expect(q.hasQKVBias && q.tiedEmbeddings && q.slidingWindow == 32 && q.attentionWindow == nil)
        let mi = try Fixtures.loadedModel("mistral-window").config
        #expect(mi.attentionWindow == 4096 && mi.headDimension == 24 && mi.qDim == 96 && !mi.hasQKVBias)
    }

    @Test("the fixtures are sensitive: without llama3 scaling or without the biases the residuals move")
    func sensitivity() throws {
        let unscaled = try Self.edited("llama3-rope") { $0["rope_scaling"] = NSNull() }
        let u = try LoadedModel.load(path: unscaled, includeHead: true, threads: 2)
        #expect(try Self.errors(u.model, try Self.reference("llama3-rope")).resid > 1e-2)

        let q = try Fixtures.loadedModel("qwen2-bias")
        var w = q.model.weights
        #expect(w.layers.allSatisfy { $0.qBias != nil && $0.kBias != nil && $0.vBias != nil })
        w.layers = w.layers.map { var l = $0; l.qBias = nil; l.kBias = nil; l.vBias = nil; return l }
        #expect(try Self.errors(LlamaModel(weights: w, pool: q.model.pool), try Self.reference("qwen2-bias")).resid > 1e-2)
    }

    /// The config edits of Tests/fixtures/make_window_fixtures.py (variant → fixture model and edits).
    static let windowVariants: [String: (base: String, edit: [String: Any])] = {
        var v: [String: (base: String, edit: [String: Any])] = [:]
        v["mistral-w16"] = ("mistral-window", ["sliding_window": 16])
        v["mistral-w100"] = ("mistral-window", ["sliding_window": 100])
        let types: [String] = ["full_attention", "sliding_attention", "full_attention"]
        v["qwen2-types"] = ("qwen2-bias", ["use_sliding_window": true, "sliding_window": 8, "layer_types": types])
        v["qwen2-maxlayers"] = ("qwen2-bias", ["use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1,
                                               "layer_types": NSNull()])
        return v
    }()

    static func windowed(_ variant: String) throws -> LoadedModel {
        let v = try #require(windowVariants[variant])
        let dir = try edited(v.base) { obj in
            for (k, value) in v.edit { if value is NSNull { obj.removeValue(forKey: k) } else { obj[k] = value } }
        }
        return try LoadedModel.load(path: dir, includeHead: true, threads: 2)
    }

    @Test("sliding-window attention matches HF past the window (row and sgemm attention, per-layer Qwen2 windows)",
          arguments: ["mistral-w16", "mistral-w100", "qwen2-types", "qwen2-maxlayers"])
    func slidingWindow(variant: String) throws {
        let ref = try SafeTensorsFile(path: Fixtures.root.appendingPathComponent("references/window.safetensors").path)
        let m = try Self.windowed(variant)
        let c = m.config, d = c.hiddenSize, L = c.numHiddenLayers
        let full = try LoadedModel.load(path: try Self.edited(Self.windowVariants[variant]!.base) { $0["sliding_window"] = NSNull(); $0["use_sliding_window"] = false },
                                        includeHead: true, threads: 2)
        for i in 0..<2 {
            let ids = try ref.integers("\(variant).p\(i).tokens").map(Int32.init)
            let pos = try ref.integers("\(variant).p\(i).positions").map { Int($0) }
            let all = try m.model.capture(ids, CaptureOptions(positions: .all, logits: true))
            let T = ids.count
            func pick(_ r: [Float]) -> [Float] {
                var out: [Float] = []
                for l in 0..<L {
                    for p in pos {
                        let start: Int = (l * T + p) * d
                        out.append(contentsOf: r[start..<(start + d)])
                    }
                }
                return out
            }
            let e = relativeError(pick(all.residPost), try ref.floats("\(variant).p\(i).resid"))
            let el = relativeError(all.logitsLast!, try ref.floats("\(variant).p\(i).logits"))
            print("\(variant) \(T) tokens: resid rel error \(e), logits \(el)")
            #expect(e <= Self.tolerance && el <= Self.tolerance, "\(variant), \(T) tokens: resid \(e), logits \(el)")
            // The reference really is windowed: past the window, full attention is far from it.
            guard T > c.attentionWindow ?? (1 << 30) || variant.hasPrefix("qwen2") else { continue }
            let ef = relativeError(pick(try full.model.capture(ids, CaptureOptions(positions: .all)).residPost), try ref.floats("\(variant).p\(i).resid"))
            #expect(ef > 1e-2, "\(variant): full attention is within \(ef) of the windowed reference")
            // Decoding past the window with the KV cache gives the same logits as the whole prompt.
            if T == 40 {
                let cache = try m.model.makeCache(capacity: T)
                _ = try m.model.prefill(Array(ids.prefix(20)), cache: cache)
                var last: [Float] = []
                for t in ids.dropFirst(20) { last = Array(try m.model.decode(t, cache: cache)) }
                let ed = relativeError(last, try ref.floats("\(variant).p\(i).logits"))
                #expect(ed <= Self.tolerance, "\(variant): decoded logits rel error \(ed)")
            }
        }
    }

    @Test("window settings: Qwen2's window only where enabled; bad layer_types refused; mixed windows not written to GGUF")
    func windowSettings() throws {
        let q = try Self.windowed("qwen2-maxlayers").config
        #expect((0..<3).map { q.attentionWindow(layer: $0) } == [nil, 8, 8] && q.hasMixedWindows)
        let t = try Self.windowed("qwen2-types").config
        #expect((0..<3).map { t.attentionWindow(layer: $0) } == [nil, 8, nil])
        let off = try Fixtures.loadedModel("qwen2-bias").config   // sliding_window 32, use_sliding_window false
        #expect(off.attentionWindow == nil && !off.hasMixedWindows)
        let mi = try Self.windowed("mistral-w16").config
        #expect((0..<3).map { mi.attentionWindow(layer: $0) } == [16, 16, 16] && mi.attentionWindow == 16 && !mi.hasMixedWindows)
        func error(_ edit: @escaping (inout [String: Any]) -> Void) -> String {
            do { _ = try LoadedModel.load(path: try Self.edited("qwen2-bias", edit), threads: 1); return "" } catch { return error.localizedDescription }
        }
        #expect(error { $0["layer_types"] = ["full_attention"] }.contains("'layer_types': has 1 entries for 3 layers"))
        #expect(error { $0["layer_types"] = ["full_attention", "chunked_attention", "full_attention"] }.contains("'chunked_attention' is not 'full_attention' or 'sliding_attention'"))
        #expect(error { $0["max_window_layers"] = -1 }.contains("'max_window_layers': must be a layer count"))
        let out = temporaryDirectory("mixed") + "/m.gguf"
        let dir = try Self.edited("qwen2-bias") { $0["use_sliding_window"] = true; $0["sliding_window"] = 8; $0["max_window_layers"] = 1; $0.removeValue(forKey: "layer_types") }
        let refused = #expect(throws: ConfigError.self) {
            try Quantizer.run(checkpoint: try HFCheckpoint(directory: dir), tokenizer: try Fixtures.loadedModel("qwen2-bias").tokenizer,
                              outPath: out, type: .f16, pool: ThreadPool(threads: 1))
        }
        #expect(refused?.localizedDescription.contains("only some layers use the attention window") == true)
    }

    @Test("other families, rope types and settings are refused by name")
    func refusals() throws {
        func error(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
            let dir = try Self.edited(name, edit)
            do { _ = try LlamaConfig.load(path: dir + "/config.json") } catch { return error.localizedDescription }
            return "no error"
        }
        #expect(try error("mistral-window") { $0["model_type"] = "gemma" }
            .contains("'model_type': 'gemma' is not supported: the supported families are 'llama', 'mistral', 'qwen2'"))
        #expect(try error("qwen2-bias") { $0["architectures"] = ["LlamaForCausalLM"] }
            .contains("'architectures': [\"LlamaForCausalLM\"] is not supported for model_type 'qwen2': expected Qwen2ForCausalLM"))
        #expect(try error("llama3-rope") { $0["rope_scaling"] = ["rope_type": "yarn", "factor": 4.0] }
            .contains("'rope_scaling': rope scaling type 'yarn' is not supported (only 'linear', 'llama3' and 'default')"))
        #expect(try error("llama3-rope") { $0["rope_scaling"] = ["rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64] }
            .contains("'rope_scaling': llama3 scaling needs a numeric 'low_freq_factor'"))
        #expect(try error("llama3-rope") { $0["rope_scaling"] = ["rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64] }
            .contains("'high_freq_factor' (4.0) greater than 'low_freq_factor' (4.0)"))
        #expect(try error("llama3-rope") { $0["attention_bias"] = true }.contains("'attention_bias': true is not supported for model_type 'llama'"))
        #expect(try error("mistral-window") { $0["mlp_bias"] = true }.contains("'mlp_bias': MLP biases are not supported"))
        #expect(try error("qwen2-bias") { $0["attention_bias"] = true; $0["mlp_bias"] = true } == "no error")   // HF's Qwen2 ignores both
        #expect(try error("mistral-window") { $0["sliding_window"] = 0 }.contains("'sliding_window': must be positive, got 0"))
    }

    @Test("quantize writes Qwen2 (qwen2 architecture, biases) and Mistral (window); the GGUF reloads and agrees",
          arguments: ["qwen2-bias", "mistral-window"])
    func quantized(name: String) throws {
        let out = temporaryDirectory(name) + "/m.gguf"
        let hf = try Fixtures.loadedModel(name)
        try Quantizer.run(checkpoint: try HFCheckpoint(directory: Fixtures.model(name)), tokenizer: hf.tokenizer,
                          outPath: out, type: .f16, pool: ThreadPool(threads: 2))
        let g = try GGUFFile(path: out)
        let arch = name == "qwen2-bias" ? "qwen2" : "llama"
        #expect(g.metadata["general.architecture"] == .string(arch))
        if name == "qwen2-bias" {
            #expect(g.tensors["blk.0.attn_q.bias"]?.shape == [64] && g.tensors["blk.2.attn_v.bias"]?.shape == [32])
            #expect(g.metadata["qwen2.attention.sliding_window"] == nil)
        } else {
            #expect(g.metadata["llama.attention.sliding_window"] == .uint32(4096))
        }
        let back = try LoadedModel.load(path: out, includeHead: true, threads: 2)
        #expect(back.config.family == hf.config.family && back.config.attentionWindow == hf.config.attentionWindow)
        #expect(back.model.weights.ropeLayout == (name == "qwen2-bias" ? .rotateHalf : .interleaved))
        // F16 weights: close to HF, far closer than the sensitivity above.
        let e = try Self.errors(back.model, try Self.reference(name))
        print("\(name) GGUF f16: resid rel error \(e.resid), logits \(e.logits)")
        #expect(e.resid <= 5e-3)
        // The same weights as the directory's (Q8_0 rows in HF order, biases exactly).
        #expect(back.model.weights.fingerprint(pool: back.model.pool) != "" )
        if name == "qwen2-bias" {
            #expect(back.model.weights.layers[1].kBias == hf.model.weights.layers[1].kBias)
        }
    }

    @Test("quantize writes llama3 rope scaling as llama.cpp's rope_freqs.weight; the GGUF reloads and agrees")
    func llama3Quantize() throws {
        let dir = temporaryDirectory()
        let hf = try Fixtures.loadedModel("llama3-rope")
        for type in [Quantizer.OutputType.f16, .q8_0] {
            try Quantizer.run(checkpoint: try HFCheckpoint(directory: Fixtures.model("llama3-rope")), tokenizer: hf.tokenizer,
                              outPath: dir + "/\(type).gguf", type: type, pool: ThreadPool(threads: 2))
        }
        let g = try GGUFFile(path: dir + "/f16.gguf")
        let factors = try g.floats("rope_freqs.weight")
        #expect(factors.count == 8 && factors[0] == 1 && factors[1] > 1 && factors[2] < 8 && factors[3] == 8 && factors[7] == 8)
        let back = try LoadedModel.load(path: dir + "/f16.gguf", includeHead: true, threads: 2)
        #expect(back.model.weights.ropeFreqFactors == factors)
        // Same frequencies as HF's formula up to float32 rounding.
        #expect(relativeError(back.model.weights.ropeInverseFrequencies, hf.config.ropeInverseFrequencies) < 1e-6)
        let e = try Self.errors(back.model, try Self.reference("llama3-rope"))
        print("llama3-rope GGUF f16: resid rel error \(e.resid), logits \(e.logits)")
        #expect(e.resid <= 5e-3)
        var plain = back.model.weights
        plain.ropeFreqFactors = nil
        #expect(try Self.errors(LlamaModel(weights: plain, pool: back.model.pool), try Self.reference("llama3-rope")).resid > 1e-2)
        // The Q8_0 GGUF has the directory's fingerprint (rope factors included), the unscaled model another.
        let q8 = try LoadedModel.load(path: dir + "/q8_0.gguf", threads: 2)
        #expect(q8.model.weights.fingerprint(pool: q8.model.pool) == hf.model.weights.fingerprint(pool: hf.model.pool))
        var q8plain = q8.model.weights
        q8plain.ropeFreqFactors = nil
        #expect(q8plain.fingerprint(pool: q8.model.pool) != hf.model.weights.fingerprint(pool: hf.model.pool))
    }

    @Test("one table of layer tensors: both formats' expected lists come from it, biases only where the config has them")
    func schema() throws {
        let q = try Fixtures.loadedModel("qwen2-bias").config, l = try Fixtures.loadedModel("llama3-rope").config
        #expect(LayerTensor.layer(1, l, gguf: false).count == 9 && LayerTensor.layer(1, q, gguf: false).count == 12)
        #expect(LayerTensor.layer(1, q, gguf: true).map(\.name).contains("blk.1.attn_k.bias"))
        #expect(HFCheckpoint.expectedTensors(q).count == GGUFModel.expectedTensors(q).count)
        #expect(HFCheckpoint.expectedTensors(q).map(\.shape) == GGUFModel.expectedTensors(q).map(\.shape))
        #expect(HFCheckpoint.expectedTensors(q).map(\.name).contains("model.layers.2.self_attn.v_proj.bias"))
        #expect(!HFCheckpoint.expectedTensors(l).map(\.name).contains { $0.hasSuffix(".bias") })
    }

    /// A copy of a fixture GGUF (llama.cpp's converter) with `rope_freqs.weight` = `factors` added (F32).
    static func withRopeFreqs(_ factors: [Float], _ function: String = #function) throws -> String {
        let g = try GGUFFile(path: Fixtures.root.appendingPathComponent("gguf/mha-f32-f32.gguf").path)
        let meta = g.metadataKeys.map { ($0, g.metadata[$0]!) }
        let out = temporaryDirectory(function) + "/rope.gguf"
        let infos = g.tensorNames.map { g.tensors[$0]! }
        let w = try GGUFWriter(path: out, metadata: meta, tensors: [GGUFWriter.Spec("rope_freqs.weight", .f32, [factors.count])]
                               + infos.map { GGUFWriter.Spec($0.name, $0.type, $0.shape) })
        try w.write(factors)
        for t in infos { try w.write(g.bytes(t)) }
        try w.commit()
        return out
    }

    @Test("a GGUF's rope_freqs.weight is used, and refused by name when its shape or a factor is wrong")
    func ropeFreqsChecked() throws {
        let plain = try LoadedModel.load(path: Fixtures.root.appendingPathComponent("gguf/mha-f32-f32.gguf").path, threads: 1)
        let half = plain.config.headDimension / 2
        let factors = (0..<half).map { Float(1 + $0) }
        let ok = try LoadedModel.load(path: try Self.withRopeFreqs(factors), threads: 1)
        #expect(ok.model.weights.ropeFreqFactors == factors)
        #expect(ok.model.weights.ropeInverseFrequencies == zip(plain.model.weights.ropeInverseFrequencies, factors).map { $0 / $1 })
        func message(_ f: [Float]) throws -> String {
            let path = try Self.withRopeFreqs(f)
            do { _ = try LoadedModel.load(path: path, threads: 1) } catch { return error.localizedDescription }
            return "no error"
        }
        #expect(try message(Array(factors.dropLast())).contains("rope_freqs.weight': shape [\(half - 1)] does not match [\(half)]"))
        var zero = factors
        zero[2] = 0
        #expect(try message(zero).contains("factor 2 is 0.0: rope frequency factors must be positive and finite"))
    }
}
