import Foundation
import Model
import Quant
import Formats
import Testing

@Suite struct SentencePieceModelTests {
    static func contents(_ path: String) throws -> SentencePieceModel.Contents {
        try SentencePieceModel.parse(Data(contentsOf: URL(fileURLWithPath: path)), source: path)
    }

    static func rebuild(_ c: SentencePieceModel.Contents) -> Data {
        SentencePieceModel.serialize(pieces: c.pieces, unkID: c.unkID, bosID: c.bosID, eosID: c.eosID, padID: c.padID,
                                     addDummyPrefix: c.addDummyPrefix, byteFallback: c.byteFallback)
    }

    /// The pieces, scores and special ids of `b` are those of `a`.
    static func expectSameVocabulary(_ a: Tokenizer, _ b: Tokenizer) {
        #expect(a.vocabSize == b.vocabSize && a.bosID == b.bosID && a.eosID == b.eosID && a.unkID == b.unkID)
        var mismatches = 0
        for id in 0..<Int32(a.vocabSize) where a.piece(id) != b.piece(id) || a.score(id) != b.score(id) { mismatches += 1 }
        #expect(mismatches == 0)
    }

    @Test("parse reads Meta's LLaMA-2 tokenizer.model as SentencePiece loads it")
    func parseLlama2() throws {
        let c = try Self.contents(Fixtures.llama2Tokenizer)
        let tok = try Tokenizer(path: Fixtures.llama2Tokenizer)
        #expect(c.pieces.count == 32000 && c.modelType == 2 && c.vocabSize == 32000 && c.byteFallback)
        #expect(c.unkID == 0 && c.bosID == 1 && c.eosID == 2 && c.padID == -1)
        #expect(c.normalizerName == "identity" && c.precompiledCharsmap.isEmpty && c.addDummyPrefix
                && !c.removeExtraWhitespaces && c.escapeWhitespaces && !c.treatWhitespaceAsSuffix)
        #expect(c.pieces.enumerated().allSatisfy { tok.piece(Int32($0.offset)) == $0.element.piece && tok.score(Int32($0.offset)) == $0.element.score })
        let counts = Dictionary(grouping: c.pieces, by: \.type).mapValues(\.count)
        #expect(counts == [1: 31741, 2: 1, 3: 2, 6: 256])
        #expect(c.pieces[0].type == 2 && c.pieces[1].type == 3 && c.pieces[3].piece == "<0x00>" && c.pieces[3].type == 6)
        // serialize ∘ parse is the identity on what it keeps.
        let again = try SentencePieceModel.parse(Self.rebuild(c), source: "rebuilt")
        #expect(again.pieces.elementsEqual(c.pieces) { $0 == $1 } && again.unkID == 0 && again.bosID == 1 && again.padID == -1)
        #expect(again.modelType == 2 && again.byteFallback && !again.removeExtraWhitespaces && again.normalizerName == "identity")
    }

    @Test("(a) LLaMA-2's tokenizer rebuilt from its pieces gives HF's ids on every committed string")
    func rebuiltLlama2() throws {
        let original = try Tokenizer(path: Fixtures.llama2Tokenizer)
        let rebuilt = try Tokenizer(serialized: Self.rebuild(try Self.contents(Fixtures.llama2Tokenizer)), source: "rebuilt")
        Self.expectSameVocabulary(original, rebuilt)
        #expect(Fixtures.llama2TokenCases.count >= 30)
        for c in Fixtures.llama2TokenCases {
            #expect(try rebuilt.encode(c.text) == c.ids, "text: \(c.text.debugDescription)")
        }
        #expect(try rebuilt.decode([15043, 3186]) == "Hello world")
    }

    @Test("(b) the fixture tokenizer rebuilt from its pieces gives HF's ids for every case")
    func rebuiltFixture() throws {
        let path = Fixtures.root.appendingPathComponent("tokenizer/fixture.model").path
        let rebuilt = try Tokenizer(serialized: Self.rebuild(try Self.contents(path)), source: "rebuilt")
        Self.expectSameVocabulary(try Tokenizer(path: path), rebuilt)
        for c in Fixtures.cases {
            #expect(try rebuilt.encode(c.rendered) == c.ids, "case \(c.name)")
        }
    }

    @Test("without the dummy prefix, a leading word is not marked as word-initial")
    func dummyPrefix() throws {
        let c = try Self.contents(Fixtures.llama2Tokenizer)
        let data = SentencePieceModel.serialize(pieces: c.pieces, unkID: 0, bosID: 1, eosID: 2, padID: -1, addDummyPrefix: false)
        let tok = try Tokenizer(serialized: data, source: "no-prefix")
        #expect(try tok.encode("Hello world") != [1, 15043, 3186])
        #expect(try tok.encode(" Hello world") == [1, 15043, 3186])
    }

    func writeGGUF(_ metadata: [(String, GGUFValue)], _ name: String = #function) throws -> GGUFFile {
        let path = temporaryDirectory(name) + "/vocab.gguf"
        let w = try GGUFWriter(path: path, metadata: [("general.architecture", .string("llama"))] + metadata, tensors: [])
        try w.commit()
        return try GGUFFile(path: path)
    }

    @Test("(c) fromGGUF on llama.cpp's tokenizer keys gives the original tokenizer's ids")
    func fromGGUF() throws {
        for (path, cases) in [(Fixtures.llama2Tokenizer, Fixtures.llama2TokenCases.map { ($0.text, $0.ids) }),
                              (Fixtures.root.appendingPathComponent("tokenizer/fixture.model").path,
                               Fixtures.cases.map { ($0.rendered, $0.ids) })] {
            let c = try Self.contents(path)
            let g = try writeGGUF(SentencePieceModel.ggufMetadata(c))
            #expect(try g.stringArray("tokenizer.ggml.tokens").count == c.pieces.count)
            let tok = try Tokenizer(serialized: try SentencePieceModel.fromGGUF(g), source: g.path)
            Self.expectSameVocabulary(try Tokenizer(path: path), tok)
            for (text, ids) in cases { #expect(try tok.encode(text) == ids, "text: \(text.debugDescription)") }
        }
    }

    @Test("fromGGUF: a missing unknown_token_id falls back to the UNKNOWN piece; a pad id equal to unk is dropped")
    func fromGGUFDefaults() throws {
        let c = try Self.contents(Fixtures.llama2Tokenizer)
        let meta = SentencePieceModel.ggufMetadata(c).filter { $0.0 != SentencePieceModel.Key.unk }
            + [(SentencePieceModel.Key.pad, .uint32(0))]
        let tok = try Tokenizer(serialized: try SentencePieceModel.fromGGUF(try writeGGUF(meta)), source: "gguf")
        #expect(tok.unkID == 0 && tok.bosID == 1)
        #expect(try tok.encode("Hello world") == [1, 15043, 3186])
    }

    @Test("fromGGUF refuses missing or malformed keys and other tokenizer models, naming the key")
    func fromGGUFErrors() throws {
        let c = try Self.contents(Fixtures.root.appendingPathComponent("tokenizer/fixture.model").path)
        let good = SentencePieceModel.ggufMetadata(c)
        typealias K = SentencePieceModel.Key
        func replacing(_ key: String, _ value: GGUFValue?) -> [(String, GGUFValue)] {
            var m = good.filter { $0.0 != key }
            if let value { m.append((key, value)) }
            return m
        }
        let cases: [(String, [(String, GGUFValue)], String, String)] = [
            ("no model", replacing(K.model, nil), K.model, "missing"),
            ("gpt2", replacing(K.model, .string("gpt2")), K.model, "'gpt2' is not SentencePiece"),
            ("no tokens", replacing(K.tokens, nil), K.tokens, "missing"),
            ("tokens not strings", replacing(K.tokens, .array(.int32, [.int32(1)])), K.tokens, "array of strings"),
            ("no scores", replacing(K.scores, nil), K.scores, "missing"),
            ("short scores", replacing(K.scores, .array(.float32, [.float32(0)])), K.scores, "has 1 entries but"),
            ("no types", replacing(K.tokenType, nil), K.tokenType, "missing"),
            ("bad type", replacing(K.tokenType, .array(.int32, c.pieces.indices.map { .int32($0 == 7 ? 9 : c.pieces[$0].type) })),
             K.tokenType, "token 7"),
            ("no bos", replacing(K.bos, nil), K.bos, "missing"),
            ("bos out of range", replacing(K.bos, .uint32(384)), K.bos, "outside the vocabulary"),
            ("eos wrong type", replacing(K.eos, .string("2")), K.eos, "non-negative integer"),
            ("unk out of range", replacing(K.unk, .uint32(1000)), K.unk, "outside"),
            ("space prefix not bool", replacing(K.addSpacePrefix, .uint8(1)), K.addSpacePrefix, "bool"),
        ]
        for (label, meta, key, text) in cases {
            let g = try writeGGUF(meta, "err")
            do { _ = try SentencePieceModel.fromGGUF(g); Issue.record("\(label): no error") } catch let e as GGUFError {
                #expect(e.key == key && e.file == g.path && e.reason.contains(text), "\(label): \(e.localizedDescription)")
            }
        }
        let gpt2 = try writeGGUF(replacing(K.model, .string("gpt2")))
        #expect { _ = try SentencePieceModel.fromGGUF(gpt2) } throws: { "\($0.localizedDescription)".contains("--tokenizer FILE") }
    }

    @Test("parse refuses what is not a ModelProto, naming the source")
    func parseErrors() {
        for bytes: [UInt8] in [[], [0x0A, 0x05, 0x01], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], [0x0B]] {
            #expect { _ = try SentencePieceModel.parse(Data(bytes), source: "x.model") } throws: {
                ($0 as? TokenizerError)?.source == "x.model"
            }
        }
    }
}

/// Tests/fixtures/gguf/{gqa-bf16-q8_0,mha-f32-f32}.gguf: the fixture models converted by llama.cpp's own
/// convert_hf_to_gguf.py (see Tests/fixtures/gguf/README.md).
@Suite struct LlamaCppGGUFTests {
    struct Converted: Sendable, CustomTestStringConvertible {
        let gguf: String
        let model: String
        var testDescription: String { gguf }
    }
    static let files = [Converted(gguf: "gqa-bf16-q8_0.gguf", model: "gqa-bf16"),
                        Converted(gguf: "mha-f32-f32.gguf", model: "mha-f32")]

    static func open(_ c: Converted) throws -> (GGUFFile, [String: Any]) {
        let g = try GGUFFile(path: Fixtures.root.appendingPathComponent("gguf/\(c.gguf)").path)
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.model(c.model) + "/config.json"))
        return (g, try JSONSerialization.jsonObject(with: data) as! [String: Any])
    }

    /// HF's q_proj/k_proj rows in the order convert_hf_to_gguf.py's `LlamaModel.permute` stores them:
    /// GGUF row h·D + 2i + k = HF row h·D + k·D/2 + i (head h of n, D = rows / n, i < D/2, k ∈ {0, 1}).
    static func permuted(_ w: [Float], rows: Int, heads n: Int) -> [Float] {
        let cols = w.count / rows, d = rows / n
        var out = [Float](repeating: .nan, count: w.count)
        for h in 0..<n { for i in 0..<(d / 2) { for k in 0..<2 {
            let dst = h * d + 2 * i + k, src = h * d + k * d / 2 + i
            out[(dst * cols)..<((dst + 1) * cols)] = w[(src * cols)..<((src + 1) * cols)]
        } } }
        return out
    }

    @Test("llama metadata keys equal the HF config.json", arguments: files)
    func metadata(_ c: Converted) throws {
        let (g, cfg) = try Self.open(c)
        func int(_ k: String) -> Int { (cfg[k] as! NSNumber).intValue }
        func dbl(_ k: String) -> Double { (cfg[k] as! NSNumber).doubleValue }
        #expect(g.version == 3 && g.alignment == 32)
        #expect(try g.string("general.architecture") == "llama")
        #expect(try g.uint("llama.block_count") == int("num_hidden_layers"))
        #expect(try g.uint("llama.embedding_length") == int("hidden_size"))
        #expect(try g.uint("llama.feed_forward_length") == int("intermediate_size"))
        #expect(try g.uint("llama.attention.head_count") == int("num_attention_heads"))
        #expect(try g.uint("llama.attention.head_count_kv") == int("num_key_value_heads"))
        #expect(try g.float("llama.rope.freq_base") == Float(dbl("rope_theta")))
        #expect(try g.float("llama.attention.layer_norm_rms_epsilon") == Float(dbl("rms_norm_eps")))
        #expect(try g.uint("llama.context_length") == int("max_position_embeddings"))
        #expect(try g.uint("llama.vocab_size") == int("vocab_size"))
        let headDim = cfg["head_dim"].map { ($0 as! NSNumber).intValue } ?? int("hidden_size") / int("num_attention_heads")
        #expect(try g.uintIfPresent("llama.rope.dimension_count") == headDim)
        #expect(try g.uintIfPresent("llama.attention.key_length") == headDim)
        #expect(try g.string("tokenizer.ggml.model") == "llama")
    }

    @Test("tensor names, shapes and types; values are HF's with Q/K rows permuted to the interleaved rotary layout",
          arguments: files)
    func tensors(_ c: Converted) throws {
        let (g, cfg) = try Self.open(c)
        func int(_ k: String) -> Int { (cfg[k] as! NSNumber).intValue }
        let (d, ff, layers, heads, kv, vocab) = (int("hidden_size"), int("intermediate_size"), int("num_hidden_layers"),
                                                 int("num_attention_heads"), int("num_key_value_heads"), int("vocab_size"))
        let hd = d / heads
        let tied = (cfg["tie_word_embeddings"] as? Bool) ?? false
        // GGUF name → (HF name, row-major shape).
        var expected: [String: (String, [Int])] = [
            "token_embd.weight": ("model.embed_tokens.weight", [vocab, d]),
            "output_norm.weight": ("model.norm.weight", [d]),
        ]
        if !tied { expected["output.weight"] = ("lm_head.weight", [vocab, d]) }
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            for (gg, hf, shape) in [("attn_q", "self_attn.q_proj", [heads * hd, d]), ("attn_k", "self_attn.k_proj", [kv * hd, d]),
                                    ("attn_v", "self_attn.v_proj", [kv * hd, d]), ("attn_output", "self_attn.o_proj", [d, heads * hd]),
                                    ("ffn_gate", "mlp.gate_proj", [ff, d]), ("ffn_up", "mlp.up_proj", [ff, d]),
                                    ("ffn_down", "mlp.down_proj", [d, ff]), ("attn_norm", "input_layernorm", [d]),
                                    ("ffn_norm", "post_attention_layernorm", [d])] {
                expected["blk.\(l).\(gg).weight"] = (p + hf + ".weight", shape)
            }
        }
        #expect(Set(g.tensorNames) == Set(expected.keys))
        #expect(tied == (g.tensors["output.weight"] == nil))

        var hf: [String: SafeTensorsFile] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: Fixtures.model(c.model)) where f.hasSuffix(".safetensors") {
            let s = try SafeTensorsFile(path: Fixtures.model(c.model) + "/" + f)
            for n in s.names { hf[n] = s }
        }
        let quantized = c.gguf.contains("q8_0")
        for (name, (hfName, shape)) in expected {
            let t = try g.info(name)
            #expect(t.shape == shape && t.dims == shape.reversed(), "\(name) \(t.shape)")
            #expect(t.type == (quantized && shape.count == 2 ? .q8_0 : .f32), "\(name) \(t.type.name)")
            var w = try hf[hfName]!.floats(hfName)
            if name.hasSuffix("attn_q.weight") { w = Self.permuted(w, rows: shape[0], heads: heads) }
            if name.hasSuffix("attn_k.weight") { w = Self.permuted(w, rows: shape[0], heads: kv) }
            if t.type == .q8_0 {
                // gguf-py quantized the (exactly upcast) bf16 weights: our Q8_0 gives the same blocks.
                var q = [UInt8](repeating: 0, count: t.byteCount)
                QuantType.q8_0.fromFloat(w, &q, w.count)
                #expect(Array(g.bytes(t)) == q, "\(name)")
            } else {
                #expect(try g.floats(name) == w, "\(name)")
            }
        }
        // The permutation matters: unpermuted q_proj rows differ from the file's.
        let q0 = try hf["model.layers.0.self_attn.q_proj.weight"]!.floats("model.layers.0.self_attn.q_proj.weight")
        if !quantized { #expect(try g.floats("blk.0.attn_q.weight") != q0) }
    }

    @Test("fromGGUF rebuilds the model's tokenizer.model: same vocabulary, same ids on every case", arguments: files)
    func tokenizer(_ c: Converted) throws {
        let (g, _) = try Self.open(c)
        let original = try Tokenizer(path: Fixtures.model(c.model) + "/tokenizer.model")
        let rebuilt = try Tokenizer(serialized: try SentencePieceModel.fromGGUF(g), source: g.path)
        SentencePieceModelTests.expectSameVocabulary(original, rebuilt)
        for k in Fixtures.cases {
            #expect(try rebuilt.encode(k.rendered) == k.ids, "case \(k.name)")
        }
    }
}

extension LlamaCppGGUFTests {
    @Test("GGUFWriter re-writes llama.cpp's converted files byte for byte", arguments: files)
    func rewrite(_ c: Converted) throws {
        let (g, _) = try Self.open(c)
        let out = temporaryDirectory("rewrite") + "/" + c.gguf
        let w = try GGUFWriter(path: out, metadata: g.metadataKeys.map { ($0, g.metadata[$0]!) },
                               tensors: g.tensorNames.map { let i = g.tensors[$0]!; return .init(i.name, i.type, i.shape) })
        for name in g.tensorNames { try w.write(g.bytes(g.tensors[name]!)) }
        try w.commit()
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: g.path)))
    }
}
