import Foundation
import Model
import Quant
import Formats
import Testing

/// Byte-level BPE (tokenizer.json) against Hugging Face `tokenizers` on the committed hard corpus
/// (Tests/fixtures/bpe, made by Tests/fixtures/make_bpe_fixtures.py).
@Suite struct BPETokenizerTests {
    struct Expected: Decodable {
        let vocab_size: Int
        let ids: [[Int32]]
        let ids_plain: [[Int32]]
        let decoded: [String]
    }
    struct Cases: Decodable {
        let tokenizers: String
        let texts: [String]
        let llama3: Expected
        let qwen2: Expected
    }
    static let cases: Cases = {
        let data = try! Data(contentsOf: Fixtures.root.appendingPathComponent("bpe/cases.json"))
        return try! JSONDecoder().decode(Cases.self, from: data)
    }()
    static func path(_ family: String) -> String { Fixtures.root.appendingPathComponent("bpe/\(family)/tokenizer.json").path }
    static func json(_ family: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(family)))) as! [String: Any]
    }
    static func bpe(_ object: [String: Any]) throws -> BPETokenizer {
        try BPETokenizer(json: try JSONSerialization.data(withJSONObject: object), source: "t.json")
    }

    func check(_ tok: Tokenizer, _ e: Expected, _ family: String) throws {
        let texts = Self.cases.texts
        #expect(texts.count >= 300 && e.ids.count == texts.count)
        #expect(tok.vocabSize == e.vocab_size)
        var wrong = 0
        for (i, t) in texts.enumerated() {
            let ids = try tok.encode(t)
            let plain = try tok.encode(t, addBOS: false)
            let decoded = try tok.decode(ids)
            if ids != e.ids[i] || plain != e.ids_plain[i] || decoded != e.decoded[i] { wrong += 1 }
            #expect(ids == e.ids[i], "\(family) text \(i): \(t.debugDescription)")
            #expect(plain == e.ids_plain[i], "\(family) text \(i) without special tokens: \(t.debugDescription)")
            #expect(decoded == e.decoded[i], "\(family) decode \(i): \(t.debugDescription)")
        }
        #expect(wrong == 0, "\(wrong) of \(texts.count) \(family) texts differ from Hugging Face")
    }

    @Test("Llama-3-style tokenizer.json gives HF's ids (with and without BOS) and decodes as HF on the hard corpus")
    func llama3MatchesHF() throws {
        let tok = try Tokenizer(path: Self.path("llama3"))
        #expect(tok.bpe?.pattern == .llama3 && tok.bpe?.ignoreMerges == true && tok.bpe?.nfc == false)
        #expect(tok.bosID == 901 && tok.addsBOS)
        try check(tok, Self.cases.llama3, "llama3")
    }

    @Test("Qwen2-style tokenizer.json (NFC, single digits, \"a b\" merges, no BOS) gives HF's ids on the hard corpus")
    func qwen2MatchesHF() throws {
        let tok = try Tokenizer(path: Self.path("qwen2"))
        #expect(tok.bpe?.pattern == .qwen2 && tok.bpe?.ignoreMerges == false && tok.bpe?.nfc == true)
        #expect(tok.bosID == -1 && !tok.addsBOS)
        try check(tok, Self.cases.qwen2, "qwen2")
    }

    @Test("merges as \"a b\" strings and as [a, b] pairs give the same tokenizer")
    func mergeFormats() throws {
        var o = try Self.json("llama3")
        var model = o["model"] as! [String: Any]
        let pairs = model["merges"] as! [[String]]
        model["merges"] = pairs.map { $0.joined(separator: " ") }
        o["model"] = model
        let strings = try Self.bpe(o)
        let original = try BPETokenizer(path: Self.path("llama3"))
        #expect(strings.mergeList.elementsEqual(original.mergeList) { $0 == $1 })
        for t in Self.cases.texts.prefix(60) { #expect(strings.encode(t) == original.encode(t)) }
    }

    @Test("ignore_merges: a vocabulary word the merges do not build is one token only when it is set")
    func ignoreMerges() throws {
        let with = try BPETokenizer(path: Self.path("llama3"))
        var o = try Self.json("llama3")
        var model = o["model"] as! [String: Any]
        model["ignore_merges"] = false
        o["model"] = model
        let without = try Self.bpe(o)
        #expect(with.encode(" xyzzyplugh", addSpecialTokens: false) == [900])
        let merged = without.encode(" xyzzyplugh", addSpecialTokens: false)
        #expect(merged.count > 1 && !merged.contains(900))
        #expect(without.decode(merged) == " xyzzyplugh")
    }

    @Test("added tokens: lstrip and rstrip take the whitespace beside them; single_word only between non-word characters")
    func addedTokenFlags() throws {
        let tok = try BPETokenizer(path: Self.path("llama3"))
        let mask: Int32 = 907, rtok: Int32 = 908, cat: Int32 = 398
        #expect(tok.encode("a  <mask>", addSpecialTokens: false) == tok.encode("a", addSpecialTokens: false) + [mask])
        #expect(tok.encode("<|rtok|>  \n b", addSpecialTokens: false) == [rtok] + tok.encode("b", addSpecialTokens: false))
        #expect(tok.encode("cat", addSpecialTokens: false) == [cat])
        // Literal special-token strings in the text become their ids.
        #expect(tok.encode("<|eot_id|>", addSpecialTokens: true) == [901, 906])
    }

    @Test("NFC: a normalized added token matches its decomposed spelling; the text is composed before BPE")
    func nfc() throws {
        let tok = try BPETokenizer(path: Self.path("qwen2"))
        #expect(tok.encode("cafe\u{301}") == [903])
        #expect(tok.encode("re\u{301}sume\u{301}") == tok.encode("r\u{e9}sum\u{e9}"))
    }

    @Test("the pre-tokenizer splits as Llama-3's and Qwen2's regexes do")
    func regexSplit() throws {
        func words(_ s: String, _ p: BPETokenizer.PreTokenizerPattern) -> [String] {
            let scalars = Array(s.unicodeScalars)
            return splitWords(scalars, p)
        }
        #expect(words("12345 abc", .llama3) == ["123", "45", " abc"])
        #expect(words("12345 abc", .qwen2) == ["1", "2", "3", "4", "5", " abc"])
        #expect(words("I'M here   now\r\n\r\n  x", .llama3) == ["I", "'M", " here", "  ", " now", "\r\n\r\n", " ", " x"])
        #expect(words("a  ", .llama3) == ["a", "  "])
        #expect(words("hi!!\n\nok", .llama3) == ["hi", "!!\n\n", "ok"])
    }

    func splitWords(_ s: [Unicode.Scalar], _ p: BPETokenizer.PreTokenizerPattern) -> [String] {
        BPETokenizer.words(String(String.UnicodeScalarView(s)), p)
    }

    // MARK: Hostile files

    /// A copy of the Llama-3 fixture with `edit` applied; the error it must give.
    func refused(_ edit: (inout [String: Any]) -> Void, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var o = try Self.json("llama3")
        edit(&o)
        do {
            _ = try Self.bpe(o)
            Issue.record("accepted; expected the error \(expected)", sourceLocation: sourceLocation)
        } catch {
            let m = error.localizedDescription
            #expect(m.hasPrefix("t.json: ") && m.contains(expected), "got: \(m)", sourceLocation: sourceLocation)
        }
    }

    static func editModel(_ o: inout [String: Any], _ f: (inout [String: Any]) -> Void) {
        var m = o["model"] as! [String: Any]
        f(&m)
        o["model"] = m
    }

    @Test("a hostile tokenizer.json is refused naming the file and the field")
    func hostile() throws {
        #expect { try BPETokenizer(json: Data("[1, 2]".utf8), source: "t.json") } throws: {
            $0.localizedDescription == "t.json: tokenizer.json: is not a JSON object"
        }
        #expect { try BPETokenizer(json: Data("{\"model\": ".utf8), source: "t.json") } throws: {
            $0.localizedDescription.hasPrefix("t.json: is not valid JSON")
        }
        try refused({ $0["model"] = nil }, "model: is missing")
        try refused({ Self.editModel(&$0) { $0["type"] = "WordPiece" } }, "model.type: 'WordPiece' is not supported")
        try refused({ Self.editModel(&$0) { $0["dropout"] = 0.1 } }, "model.dropout: 0.1")
        try refused({ Self.editModel(&$0) { $0["vocab"] = [String: Any]() } }, "model.vocab: is empty")
        try refused({ Self.editModel(&$0) { var v = $0["vocab"] as! [String: Any]; v["!"] = -3; $0["vocab"] = v } },
                    "model.vocab['!']: -3.0 is not a token id")
        try refused({ Self.editModel(&$0) { var v = $0["vocab"] as! [String: Any]; v["!"] = 1.5; $0["vocab"] = v } },
                    "model.vocab['!']: 1.5 is not a token id")
        try refused({ Self.editModel(&$0) { var v = $0["vocab"] as! [String: Any]; v["!"] = 1; $0["vocab"] = v } },
                    "model.vocab: id 1 is given to both")
        try refused({ Self.editModel(&$0) { var v = $0["vocab"] as! [String: Any]; v["zzz-new"] = 5000; $0["vocab"] = v } },
                    "ids are not contiguous: 5000 ('zzz-new')")
        try refused({ Self.editModel(&$0) { var m = $0["merges"] as! [Any]; m[3] = ["Ġ", "nope-not-there"]; $0["merges"] = m } },
                    "model.merges[3]: 'nope-not-there' is not in model.vocab")
        try refused({ Self.editModel(&$0) { var m = $0["merges"] as! [Any]; m[0] = "a b c"; $0["merges"] = m } },
                    "model.merges[0]: 'a b c' is not two tokens separated by one space")
        try refused({ Self.editModel(&$0) { var m = $0["merges"] as! [Any]; m[0] = ["x", "y"]; $0["merges"] = m } },
                    "model.merges[0]: the merged token 'xy' is not in model.vocab")
        try refused({ Self.editModel(&$0) { var m = $0["merges"] as! [Any]; m[1] = 7; $0["merges"] = m } },
                    "model.merges[1]: is neither a string")
        try refused({ Self.editModel(&$0) { $0["ignore_merges"] = "yes" } }, "model.ignore_merges: is not true or false")
        try refused({ Self.editModel(&$0) { $0["unk_token"] = "<unk>" } }, "model.unk_token: '<unk>' is not in model.vocab")
        try refused({ $0["normalizer"] = ["type": "Lowercase"] }, "normalizer.type: 'Lowercase' is not supported")
        try refused({ var p = $0["pre_tokenizer"] as! [String: Any]; var s = p["pretokenizers"] as! [Any]
                      var split = s[0] as! [String: Any]; split["pattern"] = ["Regex": "\\w+"]; s[0] = split
                      p["pretokenizers"] = s; $0["pre_tokenizer"] = p },
                    "pre_tokenizer.pretokenizers[0].pattern.Regex: '\\w+' is not one this implementation knows")
        try refused({ var p = $0["pre_tokenizer"] as! [String: Any]; var s = p["pretokenizers"] as! [Any]
                      var bl = s[1] as! [String: Any]; bl["use_regex"] = true; s[1] = bl
                      p["pretokenizers"] = s; $0["pre_tokenizer"] = p },
                    "pre_tokenizer.pretokenizers[1].use_regex: true")
        try refused({ $0["pre_tokenizer"] = ["type": "Whitespace"] }, "pre_tokenizer.type: 'Whitespace' is not supported")
        try refused({ var a = $0["added_tokens"] as! [[String: Any]]; a[1]["id"] = 3; $0["added_tokens"] = a },
                    "added_tokens[1].id: 3 is already the id of")
        try refused({ var a = $0["added_tokens"] as! [[String: Any]]; a[0]["id"] = 901; $0["added_tokens"] = a },
                    "added_tokens[0].id: is 901 but model.vocab gives 'cat' the id 398")
        try refused({ var a = $0["added_tokens"] as! [[String: Any]]; a[2]["content"] = ""; $0["added_tokens"] = a },
                    "added_tokens[2].content: is empty")
        try refused({ var a = $0["added_tokens"] as! [[String: Any]]; a[2]["lstrip"] = 1; $0["added_tokens"] = a },
                    "added_tokens[2].lstrip: is not true or false")
        try refused({ var pp = $0["post_processor"] as! [String: Any]; var ps = pp["processors"] as! [[String: Any]]
                      var special = ps[1]["special_tokens"] as! [String: Any]
                      special["<|begin_of_text|>"] = ["id": "<|begin_of_text|>", "ids": [100000], "tokens": ["x"]]
                      ps[1]["special_tokens"] = special; pp["processors"] = ps; $0["post_processor"] = pp },
                    "post_processor.processors[1].special_tokens['<|begin_of_text|>'].ids[0]: 100000 is outside the vocabulary of 909 tokens")
        try refused({ $0["post_processor"] = ["type": "BertProcessing"] }, "post_processor.type: 'BertProcessing' is not supported")
        try refused({ $0["decoder"] = ["type": "WordPiece"] }, "decoder.type: 'WordPiece' is not supported")
    }

    // MARK: Loading from a checkpoint directory

    @Test("a checkpoint directory with only tokenizer.json loads it; vocab_size padded past the tokenizer is accepted; neither file is an error")
    func directory() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spm = try Data(contentsOf: Fixtures.root.appendingPathComponent("tokenizer/fixture.model"))
        // 1024 embedding rows for 909 tokens, as Qwen2.5's 151936 rows for 151665 ids.
        let c = LlamaConfig(hiddenSize: 32, intermediateSize: 32, numHiddenLayers: 1, numAttentionHeads: 2,
                            numKeyValueHeads: 1, vocabSize: 1024, maxPositionEmbeddings: 64, tieWordEmbeddings: true)
        try Synth.write(config: c, to: dir, seed: 1, dtype: .f32, tokenizer: spm, pool: ThreadPool(threads: 1))
        try FileManager.default.removeItem(atPath: dir + "/tokenizer.model")
        #expect { try LoadedModel.load(path: dir, threads: 1) } throws: {
            $0.localizedDescription.contains("has neither tokenizer.model (SentencePiece) nor tokenizer.json (BPE)")
        }
        #expect { try LoadedModel.tokenizer(forModel: dir) } throws: {
            $0.localizedDescription.contains("has neither tokenizer.model (SentencePiece) nor tokenizer.json (BPE)")
        }
        try FileManager.default.copyItem(atPath: Self.path("llama3"), toPath: dir + "/tokenizer.json")
        let m = try LoadedModel.load(path: dir, threads: 1)
        #expect(m.tokenizer.bpe != nil && m.tokenizer.vocabSize == 909 && m.config.vocabSize == 1024)
        #expect(try m.tokenizer.encode("Hello world") == Self.cases.llama3.ids[0])
        #expect(try LoadedModel.tokenizer(forModel: dir).bpe != nil)
        // tokenizer.model wins when both are present (LLaMA-2 and Mistral ship both).
        try spm.write(to: URL(fileURLWithPath: dir + "/tokenizer.model"))
        #expect(try LoadedModel.tokenizer(forModel: dir).bpe == nil)
        // More tokens than embedding rows is refused.
        var small = c
        small.vocabSize = 512
        let smallDir = dir + "/small"
        try Synth.write(config: small, to: smallDir, seed: 1, dtype: .f32, tokenizer: spm, pool: ThreadPool(threads: 1))
        try FileManager.default.removeItem(atPath: smallDir + "/tokenizer.model")
        try FileManager.default.copyItem(atPath: Self.path("llama3"), toPath: smallDir + "/tokenizer.json")
        #expect { try LoadedModel.load(path: smallDir, threads: 1) } throws: {
            $0.localizedDescription.contains("tokenizer.json: has 909 tokens but the model's vocab_size is 512")
        }
    }
}
