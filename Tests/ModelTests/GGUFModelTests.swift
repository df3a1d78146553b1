import Foundation
import Model
import Quant
import Formats
import Testing

/// GGUF models: llama.cpp's converter output loads and runs (interleaved rotary layout handled), and our
/// `quantize` writes what llama.cpp's converter writes.
@Suite struct GGUFModelTests {
    static let gguf = Fixtures.root.appendingPathComponent("gguf")

    @Test("an f32 GGUF from llama.cpp's converter gives HF's residuals (interleaved RoPE handled)")
    func llamaCppF32() throws {
        let m = try LoadedModel.load(path: Self.gguf.appendingPathComponent("mha-f32-f32.gguf").path, includeHead: true, threads: 2)
        #expect(m.model.weights.ropeLayout == .interleaved)
        let ref = try SafeTensorsFile(path: Fixtures.reference("mha-f32"))
        for (i, c) in Fixtures.cases.enumerated() {
            let ids = try m.tokenizer.encode(try c.render())
            #expect(ids == c.ids, "GGUF vocabulary tokenizes case \(c.name) differently")
            let r = try m.model.capture(ids, CaptureOptions(logits: true))
            #expect(relativeError(r.residPost, try ref.floats("p\(i).resid_post")) <= 1e-4, "\(c.name)")
            #expect(relativeError(r.logitsLast!, try ref.floats("p\(i).logits_last")) <= 1e-4, "\(c.name) logits")
        }
        // Running the interleaved weights with the rotate-half layout is wrong by far more than the tolerance.
        var w = m.model.weights
        w.ropeLayout = .rotateHalf
        let wrong = LlamaModel(weights: w, pool: m.model.pool)
        let c = Fixtures.cases.first { $0.name == "chat_default" }!
        let i = Fixtures.cases.firstIndex { $0.name == "chat_default" }!
        #expect(relativeError(try wrong.capture(c.ids, CaptureOptions()).residPost, try ref.floats("p\(i).resid_post")) > 1e-2)
    }

    @Test("our quantize writes the tensors llama.cpp's converter writes, byte for byte")
    func quantizeMatchesLlamaCpp() throws {
        let out = temporaryDirectory() + "/ours.gguf"
        let ck = try HFCheckpoint(directory: Fixtures.model("gqa-bf16"))
        let tok = try Tokenizer(path: Fixtures.model("gqa-bf16") + "/tokenizer.model")
        try Quantizer.run(checkpoint: ck, tokenizer: tok.serialized, tokenizerSource: "t", outPath: out, type: .q8_0,
                          pool: ThreadPool(threads: 2))
        let ours = try GGUFFile(path: out)
        let theirs = try GGUFFile(path: Self.gguf.appendingPathComponent("gqa-bf16-q8_0.gguf").path)
        #expect(Set(ours.tensorNames) == Set(theirs.tensorNames))
        for name in theirs.tensorNames {
            let a = try ours.info(name), b = try theirs.info(name)
            #expect(a.type == b.type && a.shape == b.shape, "\(name)")
            #expect(Array(ours.bytes(a)) == Array(theirs.bytes(b)), "\(name) differs from llama.cpp's converter")
        }
        for key in ["general.architecture", "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                    "llama.attention.layer_norm_rms_epsilon", "llama.context_length", "general.file_type",
                    "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
            #expect(ours.metadata[key] == theirs.metadata[key], "metadata \(key)")
        }
    }

    @Test("quantized models load and stay close to HF; f16 and Q8_0 outputs, head_dim ≠ d/heads")
    func quantizeRoundTrip() throws {
        for name in Fixtures.models {
            for type in Quantizer.OutputType.allCases {
                let out = temporaryDirectory() + "/\(name).\(type.rawValue).gguf"
                let ck = try HFCheckpoint(directory: Fixtures.model(name))
                let tok = try Tokenizer(path: Fixtures.model(name) + "/tokenizer.model")
                try Quantizer.run(checkpoint: ck, tokenizer: tok.serialized, tokenizerSource: "t", outPath: out,
                                  type: type, pool: ThreadPool(threads: 2))
                let m = try LoadedModel.load(path: out, threads: 2)
                #expect(m.config.headDimension == ck.config.headDimension && m.config.theta == ck.config.theta)
                #expect(m.config.epsF32 == ck.config.epsF32 && m.config.kvHeads == ck.config.kvHeads)
                let ref = try SafeTensorsFile(path: Fixtures.reference(name))
                let i = Fixtures.cases.firstIndex { $0.name == "chat_system" }!
                let c = Fixtures.cases[i]
                #expect(try m.tokenizer.encode(try c.render()) == c.ids)
                let e = relativeError(try m.model.capture(c.ids, CaptureOptions()).residPost, try ref.floats("p\(i).resid_post"))
                #expect(e <= (type == .f16 ? 0.02 : 0.1), "\(name) \(type): rel error \(e)")
            }
        }
    }

    @Test("quantize refuses NaN weights and leaves no file behind")
    func quantizeBadInput() throws {
        let dir = temporaryDirectory()
        let model = dir + "/m"
        try FileManager.default.copyItem(atPath: Fixtures.model("gqa-f16-theta"), toPath: model)
        let path = model + "/model.safetensors"
        let info = try SafeTensorsFile(path: path).info("model.layers.1.mlp.up_proj.weight")
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data[info.fileOffset + 7] = 0x7C; data[info.fileOffset + 6] = 0x00   // f16 +Inf at element 3
        try data.write(to: URL(fileURLWithPath: path))
        let out = dir + "/out.gguf"
        let ck = try HFCheckpoint(directory: model)
        do {
            try Quantizer.run(checkpoint: ck, tokenizer: try Tokenizer(path: model + "/tokenizer.model").serialized,
                              tokenizerSource: "t", outPath: out, type: .q8_0, pool: ThreadPool(threads: 2))
            Issue.record("quantized a model with an Inf weight")
        } catch {
            #expect(error.localizedDescription.contains("model.layers.1.mlp.up_proj.weight"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["m"], "a partial output was left behind")
    }

    @Test("corrupt GGUF models are refused naming the tensor or key")
    func badGGUF() throws {
        let src = Self.gguf.appendingPathComponent("gqa-bf16-q8_0.gguf").path
        let data = try Data(contentsOf: URL(fileURLWithPath: src))
        let g = try GGUFFile(path: src)
        func attempt(_ bytes: Data) -> String {
            let p = temporaryDirectory() + "/x.gguf"
            try! bytes.write(to: URL(fileURLWithPath: p))
            do { _ = try LoadedModel.load(path: p, threads: 1); return "loaded" } catch { return error.localizedDescription }
        }
        #expect(attempt(data.prefix(data.count - 100)).contains("output_norm.weight") || attempt(data.prefix(data.count - 100)).contains("past the end"))
        var magic = data; magic[0] = 0x00; magic[1] = 0x01
        #expect(attempt(magic).contains("magic"))
        // A NaN block scale in a projection.
        let t = try g.info("blk.1.attn_v.weight")
        var nan = data; nan[t.fileOffset] = 0x00; nan[t.fileOffset + 1] = 0x7E
        let m = attempt(nan)
        #expect(m.contains("blk.1.attn_v.weight") && m.contains("non-finite"), "\(m)")
    }
}
