import Foundation
import Model
import Quant
import Formats
import Testing

/// GGUF tokenizers both ways: byte-level BPE as llama.cpp's "gpt2" vocabulary, and SentencePiece's flags
/// (add_space_prefix, remove_extra_whitespaces, add_bos_token).
@Suite struct GGUFTokenizerTests {
    static let fixtureModel = Fixtures.root.appendingPathComponent("tokenizer/fixture.model").path

    func writeGGUF(_ metadata: [(String, GGUFValue)], _ name: String = #function) throws -> GGUFFile {
        let path = temporaryDirectory(name) + "/vocab.gguf"
        let w = try GGUFWriter(path: path, metadata: [("general.architecture", .string("llama"))] + metadata, tensors: [])
        try w.commit()
        return try GGUFFile(path: path)
    }

    /// A tiny checkpoint with 1024 embedding rows whose tokenizer is the `family` tokenizer.json fixture.
    func checkpoint(_ family: String, _ name: String = #function) throws -> String {
        let dir = temporaryDirectory(name)
        let c = LlamaConfig(hiddenSize: 32, intermediateSize: 32, numHiddenLayers: 1, numAttentionHeads: 2,
                            numKeyValueHeads: 1, vocabSize: 1024, maxPositionEmbeddings: 64, tieWordEmbeddings: true)
        try Synth.write(config: c, to: dir, seed: 3, dtype: .f32, tokenizer: try Data(contentsOf: URL(fileURLWithPath: Self.fixtureModel)),
                        pool: ThreadPool(threads: 1))
        try FileManager.default.removeItem(atPath: dir + "/tokenizer.model")
        try FileManager.default.copyItem(atPath: BPETokenizerTests.path(family), toPath: dir + "/tokenizer.json")
        return dir
    }

    /// Texts whose ids do not depend on what GGUF cannot record (lstrip / rstrip / single_word / normalized flags
    /// of the fixtures' added tokens <mask>, <|rtok|>, cat, café).
    static func flagFree(_ texts: [String]) -> [Int] {
        texts.indices.filter { i in
            !["<mask>", "<|rtok|>", "cat", "caf"].contains { texts[i].precomposedStringWithCanonicalMapping.contains($0) }
        }
    }

    @Test("quantize writes a tokenizer.json as llama.cpp's gpt2 vocabulary; the GGUF reloads with HF's ids")
    func bpeRoundTrip() throws {
        for (family, pre, expected) in [("llama3", "llama-bpe", BPETokenizerTests.cases.llama3),
                                        ("qwen2", "qwen2", BPETokenizerTests.cases.qwen2)] {
            let dir = try checkpoint(family)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let out = dir + "/model.gguf"
            let eos = family == "llama3" ? "<|eot_id|>" : "<|im_end|>"
            let template = "{% for m in messages %}\(family){{ m['content'] }}{% endfor %}"
            try JSONSerialization.data(withJSONObject: ["eos_token": ["content": eos, "special": true], "bos_token": NSNull(),
                                                        "chat_template": template])
                .write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
            let json = try Tokenizer(path: dir + "/tokenizer.json")
            #expect(json.eosID == json.bpe!.id(of: eos) && json.eosID > 0)
            try Quantizer.run(checkpoint: try HFCheckpoint(directory: dir), tokenizer: json, outPath: out, type: .q8_0,
                              pool: ThreadPool(threads: 1))
            let g = try GGUFFile(path: out)
            #expect(try g.string("tokenizer.ggml.model") == "gpt2")
            #expect(try g.string("tokenizer.ggml.pre") == pre)
            let tokens = try g.stringArray("tokenizer.ggml.tokens")
            #expect(tokens.count == 1024 && tokens[json.vocabSize] == "[PAD\(json.vocabSize)]" && tokens[1023] == "[PAD1023]")
            #expect(try g.stringArray("tokenizer.ggml.merges").count == json.bpe!.mergeList.count)
            let types = try g.intArray("tokenizer.ggml.token_type")
            // As llama.cpp's converter: special or special-looking (<|rtok|>) added tokens CONTROL, others USER_DEFINED.
            for t in json.bpe!.addedTokens { #expect(types[Int(t.id)] == (t.special || t.content == "<|rtok|>" ? 3 : 4), "\(t.content)") }
            #expect(types[1023] == 5 && types[0] == 1)
            #expect(try g.boolIfPresent("tokenizer.ggml.add_bos_token") == (family == "llama3"))
            #expect(try g.uintIfPresent("tokenizer.ggml.eos_token_id") == Int(json.eosID))
            #expect(try g.stringIfPresent("tokenizer.chat_template") == template)

            let m = try LoadedModel.loadGGUF(path: out, threads: 1)
            let back = m.tokenizer
            #expect(back.bpe != nil && back.vocabSize == json.vocabSize && back.bosID == json.bosID && back.eosID == json.eosID)
            #expect((0..<json.vocabSize).allSatisfy { back.pieceBytes(Int32($0)) == json.pieceBytes(Int32($0)) })
            let texts = BPETokenizerTests.cases.texts
            let compared = Self.flagFree(texts)
            #expect(compared.count > 150)
            for i in compared {
                #expect(try back.encode(texts[i]) == expected.ids[i], "\(family) text \(i): \(texts[i].debugDescription)")
            }
            // Every text: as the tokenizer.json with those flags cleared (what the GGUF records).
            var o = try BPETokenizerTests.json(family)
            o["added_tokens"] = (o["added_tokens"] as! [[String: Any]]).map {
                var t = $0
                for k in ["lstrip", "rstrip", "single_word", "normalized"] { t[k] = false }
                return t
            }
            let cleared = try BPETokenizerTests.bpe(o)
            for (i, t) in texts.enumerated() { #expect(try back.encode(t) == cleared.encode(t), "\(family) text \(i)") }
        }
    }

    @Test("a GGUF with remove_extra_whitespaces = true tokenizes as HF's LlamaTokenizer with that setting")
    func removeExtraWhitespaces() throws {
        struct Fixture: Decodable { let texts: [String]; let ids: [[Int32]] }
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: Fixtures.root.appendingPathComponent("bpe/spm_remove_extra_whitespaces.json")))
        var c = try SentencePieceModel.parse(try Data(contentsOf: URL(fileURLWithPath: Self.fixtureModel)), source: "fixture.model")
        c.removeExtraWhitespaces = true
        let on = try Tokenizer.fromGGUF(try writeGGUF(SentencePieceModel.ggufMetadata(c), "on"))
        c.removeExtraWhitespaces = false
        let meta = SentencePieceModel.ggufMetadata(c)
        #expect(meta.contains { $0.0 == "tokenizer.ggml.remove_extra_whitespaces" && $0.1 == .bool(false) })
        let off = try Tokenizer.fromGGUF(try writeGGUF(meta, "off"))
        var differ = 0
        for (t, ids) in zip(f.texts, f.ids) {
            #expect(try on.encode(t) == ids, "\(t.debugDescription)")
            if try off.encode(t) != ids { differ += 1 }
        }
        #expect(differ >= 5, "the flag must matter for these texts")
    }

    @Test("add_bos_token = false and add_space_prefix = false in a llama GGUF are honoured")
    func spmFlags() throws {
        let c = try SentencePieceModel.parse(try Data(contentsOf: URL(fileURLWithPath: Self.fixtureModel)), source: "fixture.model")
        let plain = try Tokenizer(path: Self.fixtureModel)
        let noBOS = try Tokenizer.fromGGUF(try writeGGUF(SentencePieceModel.ggufMetadata(c, addBOS: false), "nobos"))
        #expect(!noBOS.addsBOS && plain.addsBOS)
        #expect(try noBOS.encode("Hello world") == Array(try plain.encode("Hello world").dropFirst()))
        var d = c
        d.addDummyPrefix = false
        let noPrefix = try Tokenizer.fromGGUF(try writeGGUF(SentencePieceModel.ggufMetadata(d), "noprefix"))
        #expect(try noPrefix.encode("Hello") != (try plain.encode("Hello")))
    }

    @Test("quantize writes SentencePiece's add_space_prefix, remove_extra_whitespaces and add_bos_token; ids reload identical")
    func spmQuantizeWritesFlags() throws {
        let out = temporaryDirectory() + "/m.gguf"
        defer { try? FileManager.default.removeItem(atPath: (out as NSString).deletingLastPathComponent) }
        let ck = try HFCheckpoint(directory: Fixtures.model("gqa-bf16"))
        let tok = try Tokenizer(path: Fixtures.model("gqa-bf16") + "/tokenizer.model")
        try Quantizer.run(checkpoint: ck, tokenizer: tok, outPath: out, type: .q8_0, pool: ThreadPool(threads: 1))
        let g = try GGUFFile(path: out)
        #expect(try g.boolIfPresent("tokenizer.ggml.add_space_prefix") == true)
        #expect(try g.boolIfPresent("tokenizer.ggml.remove_extra_whitespaces") == false)
        #expect(try g.boolIfPresent("tokenizer.ggml.add_bos_token") == true)
        let back = try Tokenizer.fromGGUF(g)
        for c in Fixtures.cases { #expect(try back.encode(c.rendered) == c.ids, "case \(c.name)") }
    }

    @Test("a hostile gpt2 vocabulary is refused naming the GGUF key")
    func hostile() throws {
        let bpe = try BPETokenizer(path: BPETokenizerTests.path("llama3"))
        let good = bpe.ggufMetadata(rows: 1024, eosID: 902)
        func refused(_ edit: (inout [(String, GGUFValue)]) -> Void, _ expected: String, _ name: String,
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
            var m = good
            edit(&m)
            do {
                _ = try Tokenizer.fromGGUF(try writeGGUF(m, name))
                Issue.record("accepted; expected \(expected)", sourceLocation: sourceLocation)
            } catch {
                #expect(error.localizedDescription.contains(expected), "got: \(error.localizedDescription)", sourceLocation: sourceLocation)
            }
        }
        func set(_ m: inout [(String, GGUFValue)], _ key: String, _ v: GGUFValue?) {
            m.removeAll { $0.0 == key }
            if let v { m.append((key, v)) }
        }
        #expect(try Tokenizer.fromGGUF(try writeGGUF(good, "good")).encode("Hello world") == BPETokenizerTests.cases.llama3.ids[0])
        try refused({ set(&$0, "tokenizer.ggml.pre", .string("gpt-4o")) }, "pre-tokenizer 'gpt-4o' is not supported", "pre")
        try refused({ set(&$0, "tokenizer.ggml.model", .string("t5")) }, "tokenizer model 't5' is not supported", "model")
        try refused({ set(&$0, "tokenizer.ggml.merges", .array(.string, [.string("Ġ zz-not-a-token")])) },
                    "entry 0 'Ġ zz-not-a-token' names a token that is not in tokenizer.ggml.tokens", "merges")
        try refused({ set(&$0, "tokenizer.ggml.merges", .array(.string, [.string("a b c")])) },
                    "entry 0 'a b c' is not two tokens separated by one space", "merges3")
        try refused({ set(&$0, "tokenizer.ggml.token_type", .array(.int32, [.int32(1)])) },
                    "has 1 entries but tokenizer.ggml.tokens has 1024", "types")
        try refused({ set(&$0, "tokenizer.ggml.token_type", .array(.int32, (0..<1024).map { .int32($0 == 5 ? 9 : 1) })) },
                    "token 5 ('&') has type 9, not one of 1...6", "typevalue")
        try refused({ set(&$0, "tokenizer.ggml.bos_token_id", nil) }, "missing, but tokenizer.ggml.add_bos_token is true", "bos")
        try refused({ set(&$0, "tokenizer.ggml.bos_token_id", nil); set(&$0, "tokenizer.ggml.add_bos_token", nil) },
                    "missing, but tokenizer.ggml.add_bos_token is true", "bosdefault")
        var noKey = good
        set(&noKey, "tokenizer.ggml.add_bos_token", nil)
        set(&noKey, "tokenizer.ggml.pre", .string("qwen2"))
        #expect(try !Tokenizer.fromGGUF(try writeGGUF(noKey, "qwen-default")).addsBOS)
        try refused({ set(&$0, "tokenizer.ggml.eos_token_id", .uint32(5000)) }, "id 5000 is outside the vocabulary of 909 tokens", "eos")
        try refused({ set(&$0, "tokenizer.ggml.tokens", .array(.string, [])) }, "the vocabulary is empty", "empty")
    }

    @Test("tokenizer_config.json: eos_token and chat_template read (string, named list, chat_template.jinja); bad ones refused naming the field")
    func tokenizerConfig() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try TokenizerConfig.read(directory: dir) == nil)
        func write(_ o: Any) throws {
            try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
        }
        try write(["eos_token": "<|im_end|>", "bos_token": NSNull(),
                   "chat_template": [["name": "tool_use", "template": "T"], ["name": "default", "template": "D"]]])
        #expect(try TokenizerConfig.read(directory: dir) == TokenizerConfig(bosToken: nil, eosToken: "<|im_end|>", chatTemplate: "D"))
        try Data("J".utf8).write(to: URL(fileURLWithPath: dir + "/chat_template.jinja"))
        #expect(try TokenizerConfig.read(directory: dir)?.chatTemplate == "J")
        try FileManager.default.copyItem(atPath: BPETokenizerTests.path("qwen2"), toPath: dir + "/tokenizer.json")
        #expect(try Tokenizer(path: dir + "/tokenizer.json").eosID == 902)
        for (o, expected) in [(["eos_token": 7] as [String: Any], "tokenizer_config.json: eos_token: is neither a string nor an object"),
                              (["chat_template": [["name": "default"]]], "tokenizer_config.json: chat_template[0]: is not an object with \"name\" and \"template\" strings"),
                              (["chat_template": 3], "chat_template: is neither a string nor a list"),
                              (["eos_token": "<|nope|>"], "tokenizer_config.json: eos_token: '<|nope|>' is not a token of")] {
            try write(o)
            #expect { try Tokenizer(path: dir + "/tokenizer.json") } throws: { e in
                let ok = e.localizedDescription.contains(expected)
                if !ok { Issue.record("got: \(e.localizedDescription)") }
                return ok
            }
        }
    }
}
