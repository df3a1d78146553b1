import Extraction
import Formats
import Foundation
import Model
import Probe
import Testing

/// The chat templates in the readout: `auto` resolves to the checkpoint's template (or llama2-chat), the
/// render is tokenized as apply_chat_template(tokenize=True) does (no second BOS, special-token text as special
/// ids; Tests/fixtures/chat/tokens.json), and the recipe records the template and date.
@Suite struct ChatReadoutTests {
    static let chatDir = Paths.fixtures.appendingPathComponent("chat")
    struct TokenCase: Decodable { let template: String; let conversation: String; let ids: [Int32]; let ids_with_suffix: [Int32] }
    struct Tokens: Decodable { let suffix: String; let date_string: String; let bpe: [TokenCase]; let spm: [TokenCase] }
    struct Conversations: Decodable { let conversations: [String: [ChatMessage]] }
    static let tokens = try! JSONDecoder().decode(Tokens.self, from: Data(contentsOf: chatDir.appendingPathComponent("tokens.json")))
    static let conversations = try! JSONDecoder().decode(Conversations.self, from: Data(contentsOf: chatDir.appendingPathComponent("renders.json"))).conversations
    static func source(_ name: String) -> String {
        try! String(contentsOf: chatDir.appendingPathComponent("templates/\(name).jinja"), encoding: .utf8)
    }

    /// A checkpoint-like directory: the Llama-3 BPE fixture tokenizer and a tokenizer_config.json with `template`.
    static func bpeDirectory(template: String?) throws -> String {
        let dir = tempDir("chat")
        try FileManager.default.copyItem(atPath: Paths.fixtures.appendingPathComponent("bpe/llama3/tokenizer.json").path, toPath: dir + "/tokenizer.json")
        var config: [String: Any] = ["bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"]
        if let template { config["chat_template"] = template }
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
        return dir
    }

    static func content(_ name: String) -> DatasetRow.Content {
        .conversation(conversations[name]!.map { ($0.role, $0.content) })
    }

    @Test("auto with a Llama-3 checkpoint (tokenizer.json): ids equal apply_chat_template(tokenize=True), and with the suffix")
    func bpeIDs() throws {
        for name in ["llama-3.1-8b-instruct", "llama-3.2-1b-instruct"] {
            let dir = try Self.bpeDirectory(template: Self.source(name))
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let tok = try Tokenizer(path: dir + "/tokenizer.json")
            let info = try LoadedModel.chatInfo(forModel: dir)
            #expect(info.template == Self.source(name) && info.bosToken == "<|begin_of_text|>")
            for withSuffix in [false, true] {
                let base = PromptRenderer(template: .auto, suffix: withSuffix ? Self.tokens.suffix : "", dateString: Self.tokens.date_string)
                let r = try base.resolved(for: info, tokenizer: tok).renderer
                #expect(r.chat?.template.name == "checkpoint")
                let cases = Self.tokens.bpe.filter { $0.template == name }
                #expect(cases.count == 5)
                for c in cases {
                    let ids = try Extractor.promptTokens(Self.content(c.conversation), tokenizer: tok, renderer: r, maxTokens: 4096).ids
                    #expect(ids == (withSuffix ? c.ids_with_suffix : c.ids), "\(name)/\(c.conversation) suffix \(withSuffix)")
                    #expect(ids.filter { $0 == tok.bosID }.count == 1 && ids.first == tok.bosID, "one BOS, first")
                }
            }
        }
    }

    @Test("a long chat row cut to --max-tokens: BOS first, then the last tokens of the full render (suffix kept)")
    func truncation() throws {
        let dir = try Self.bpeDirectory(template: Self.source("llama-3.1-8b-instruct"))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tok = try Tokenizer(path: dir + "/tokenizer.json")
        let r = try PromptRenderer(template: .auto).resolved(for: try LoadedModel.chatInfo(forModel: dir), tokenizer: tok).renderer
        let long = String(repeating: "I walked to the market and it rained the whole way. ", count: 60)
        let row = DatasetRow.Content.conversation([("system", "Be kind."), ("user", long), ("assistant", "Oh no."), ("user", long)])
        let full = try Extractor.promptTokens(row, tokenizer: tok, renderer: r, maxTokens: 100_000)
        #expect(!full.truncated && full.ids.first == tok.bosID && full.ids.filter { $0 == tok.bosID }.count == 1)
        let cut = try Extractor.promptTokens(row, tokenizer: tok, renderer: r, maxTokens: 64)
        #expect(cut.truncated && cut.ids.count == 64)
        #expect(cut.ids == [tok.bosID] + full.ids.suffix(63))
    }

    @Test("SentencePiece with control pieces ([INST], [/INST]): Mistral v0.3's render tokenizes as HF's LlamaTokenizer does")
    func spmIDs() throws {
        let tok = try Tokenizer(path: Self.chatDir.appendingPathComponent("spm-inst.model").path)
        let info = ModelChatInfo(template: Self.source("mistral-7b-instruct-v0.3"), bosToken: "<s>", eosToken: "</s>", source: "mistral-v0.3 test")
        for withSuffix in [false, true] {
            let r = try PromptRenderer(template: .auto, suffix: withSuffix ? Self.tokens.suffix : "").resolved(for: info, tokenizer: tok).renderer
            for c in Self.tokens.spm {
                let ids = try Extractor.promptTokens(Self.content(c.conversation), tokenizer: tok, renderer: r, maxTokens: 4096).ids
                #expect(ids == (withSuffix ? c.ids_with_suffix : c.ids), "\(c.conversation) suffix \(withSuffix)")
            }
            // The built-in mistral template gives the same ids for these conversations.
            let b = try PromptRenderer(template: .mistral, suffix: withSuffix ? Self.tokens.suffix : "").resolved(for: info, tokenizer: tok).renderer
            for c in Self.tokens.spm {
                #expect(try Extractor.promptTokens(Self.content(c.conversation), tokenizer: tok, renderer: b, maxTokens: 4096).ids
                        == (withSuffix ? c.ids_with_suffix : c.ids))
            }
        }
    }

    @Test("auto without a chat template is llama2-chat (the reference recipe), said in one note")
    func autoFallsBack() throws {
        let dir = try Self.bpeDirectory(template: nil)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tok = try Tokenizer(path: dir + "/tokenizer.json")
        let (r, note) = try PromptRenderer(template: .auto).resolved(for: try LoadedModel.chatInfo(forModel: dir), tokenizer: tok)
        #expect(r == PromptRenderer(template: .llama2Chat))
        #expect(note == "note: \(dir) has no chat template: using --template llama2-chat (the reference recipe's LLaMA-2 chat format)")
        let recipe = ReadoutRecipe(renderer: r, maxTokens: 64, withEmbeddings: false, tokenizer: tok)
        #expect(recipe.chat == nil && !recipe.json.contains("\"chat\"") && recipe.template == "llama2-chat")
    }

    @Test("a template the renderer cannot render is an error naming the --template choices, never another format")
    func unrenderable() throws {
        let tok = try Tokenizer(path: Paths.fixtures.appendingPathComponent("bpe/llama3/tokenizer.json").path)
        for bad in ["{% include 'other.jinja' %}", "{{ messages[0].content | wordwrap(5) }}", "{% if %}"] {
            let info = ModelChatInfo(template: bad, bosToken: nil, eosToken: nil, source: "ckpt")
            do {
                _ = try PromptRenderer(template: .auto).resolved(for: info, tokenizer: tok)
                Issue.record("\(bad) was accepted")
            } catch {
                #expect(error.localizedDescription.contains("--template llama2-chat|llama3|chatml|mistral|raw"), "\(error.localizedDescription)")
                #expect(error.localizedDescription.contains("chat template"))
            }
        }
        // A row the template refuses (raise_exception) is that row's error, in the template's words.
        let info = ModelChatInfo(template: Self.source("mistral-7b-instruct-v0.2"), bosToken: "<s>", eosToken: "</s>", source: "ckpt")
        let r = try PromptRenderer(template: .auto).resolved(for: info, tokenizer: tok).renderer
        #expect(throws: TemplateError(reason: "the checkpoint's chat template refused the conversation: After the optional system message, conversation roles must alternate user/assistant/user/assistant/...")) {
            try Extractor.promptTokens(.conversation([("user", "a"), ("user", "b")]), tokenizer: tok, renderer: r, maxTokens: 64)
        }
    }

    @Test("the recipe records the template's sha256 and the date; predict's renderer refuses another template naming both")
    func recipeRecordsTemplate() throws {
        let dir = try Self.bpeDirectory(template: Self.source("llama-3.2-1b-instruct"))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tok = try Tokenizer(path: dir + "/tokenizer.json")
        let info = try LoadedModel.chatInfo(forModel: dir)
        let r = try PromptRenderer(template: .auto).resolved(for: info, tokenizer: tok, today: "2025-03-04").renderer
        let recipe = ReadoutRecipe(renderer: r, maxTokens: 256, withEmbeddings: false, tokenizer: tok)
        let sha = try #require(r.chat?.template.sha256)
        #expect(recipe.chat == ReadoutRecipe.ChatRecord(template: "sha256:" + sha, dateString: nil, today: "2025-03-04"))
        #expect(recipe.json.contains("\"chat\":{\"template_sha256\":\"sha256:\(sha)\",\"today\":\"2025-03-04\"}"))
        // Read back (as predict does): same template, the recorded day rendered.
        let back = try ReadoutRecipe.parse(recipe.json, file: "readout.json")
        let again = try back.renderer(for: info, tokenizer: tok)
        #expect(try again.render("hi").contains("Today Date: 04 Mar 2025\n\n"))
        #expect(try back.tokens(.message("hi"), tokenizer: tok, renderer: again).ids == recipe.tokens(.message("hi"), tokenizer: tok, renderer: r).ids)
        // Another checkpoint template: refused, both named.
        let other = ModelChatInfo(template: Self.source("llama-3.1-8b-instruct"), bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>", source: "other-model")
        let otherSHA = try ChatTemplate(name: "checkpoint", source: Self.source("llama-3.1-8b-instruct")).sha256
        do {
            _ = try back.renderer(for: other, tokenizer: tok)
            Issue.record("another template was accepted")
        } catch {
            #expect(error.localizedDescription.contains("sha256:\(sha)") && error.localizedDescription.contains("sha256:\(otherSHA)")
                    && error.localizedDescription.contains("other-model"), "\(error.localizedDescription)")
        }
        // A checkpoint without a template: refused too.
        #expect(throws: ExtractionError.self) {
            try back.renderer(for: ModelChatInfo(template: nil, bosToken: nil, eosToken: nil, source: "plain"), tokenizer: tok)
        }
        // --date is the template's date_string, recorded instead of the day.
        let dated = try PromptRenderer(template: .auto, dateString: "09 Sep 2029").resolved(for: info, tokenizer: tok).renderer
        #expect(try dated.render("hi").contains("Today Date: 09 Sep 2029\n\n"))
        #expect(ReadoutRecipe(renderer: dated, maxTokens: 256, withEmbeddings: false, tokenizer: tok).chat?.dateString == "09 Sep 2029")
        #expect(ReadoutRecipe(renderer: dated, maxTokens: 256, withEmbeddings: false, tokenizer: tok).chat?.today == nil)
        // --date YYYY-MM-DD is the day strftime_now formats (how an extraction is resumed on another day).
        #expect(PromptRenderer.date("2030-01-02") == (nil, "2030-01-02") && PromptRenderer.date("26 Jul 2024") == ("26 Jul 2024", nil))
        let day = try PromptRenderer(template: .auto, clockDay: "2030-01-02").resolved(for: info, tokenizer: tok).renderer
        #expect(try day.render("hi").contains("Today Date: 02 Jan 2030\n\n"))
        #expect(ReadoutRecipe(renderer: day, maxTokens: 256, withEmbeddings: false, tokenizer: tok).chat?.today == "2030-01-02")
        // Llama-3.1's template does not read the clock: a day is refused (its date_string is what it takes).
        let l31 = ModelChatInfo(template: Self.source("llama-3.1-8b-instruct"), bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>", source: "l31")
        #expect(throws: TemplateError.self) { try PromptRenderer(template: .auto, clockDay: "2030-01-02").resolved(for: l31, tokenizer: tok) }
    }

    @Test("the default suffix loses its leading space after a generation prompt ending in whitespace (Llama-3, ChatML), not after Mistral's [/INST]; a --suffix is kept")
    func defaultSuffixSpace() throws {
        let tok = try Tokenizer(path: Paths.fixtures.appendingPathComponent("llama2-tokenizer/tokenizer.model").path)
        let l31 = ModelChatInfo(template: Self.source("llama-3.1-8b-instruct"), bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>", source: "l31")
        let auto = try PromptRenderer(template: .auto).resolved(for: l31, tokenizer: tok).renderer
        #expect(try auto.render("hi").hasSuffix("<|start_header_id|>assistant<|end_header_id|>\n\nI think the emotional state of this user is"))
        #expect(auto.suffix == "I think the emotional state of this user is")
        let chatml = try PromptRenderer(template: .chatml).resolved(for: l31, tokenizer: tok).renderer
        #expect(try chatml.render("hi").hasSuffix("<|im_start|>assistant\nI think the emotional state of this user is"))
        let mistral = try PromptRenderer(template: .mistral).resolved(for: l31, tokenizer: tok).renderer
        #expect(try mistral.render("hi").hasSuffix("[/INST] I think the emotional state of this user is"))
        let given = try PromptRenderer(template: .auto, suffix: " I feel").resolved(for: l31, tokenizer: tok).renderer
        #expect(try given.render("hi").hasSuffix("\n\n I feel"))
        // Recorded and read back: the recipe holds the suffix used, and resolving again keeps it.
        let recipe = ReadoutRecipe(renderer: auto, maxTokens: 256, withEmbeddings: false, tokenizer: tok)
        #expect(recipe.suffix == "I think the emotional state of this user is")
        #expect(try recipe.renderer(for: l31, tokenizer: tok).suffix == "I think the emotional state of this user is")
    }

    @Test("llama2-chat stays the reference recipe: same text, same ids, no chat record")
    func llama2Unchanged() throws {
        let tok = try Tokenizer(path: Paths.fixtures.appendingPathComponent("llama2-tokenizer/tokenizer.model").path)
        let r = PromptRenderer(template: .llama2Chat)
        #expect(try r.render(" hi ") == "[INST] hi [/INST] I think the emotional state of this user is")
        #expect(r.addsBOS(to: "<s>x"))
        let ids = try Extractor.promptTokens(.message("hi"), tokenizer: tok, renderer: r, maxTokens: 64).ids
        #expect(ids == (try tok.encode("[INST] hi [/INST] I think the emotional state of this user is")))
        #expect(ReadoutRecipe(renderer: r, maxTokens: 64, withEmbeddings: false, tokenizer: tok).chat == nil)
    }
}

/// End to end: chat rows through `extract --template auto` on a Llama-3-style checkpoint with a tokenizer.json
/// and the real Llama-3.1 template, against Hugging Face (Tests/fixtures/chat/make_chat_model.py).
@Suite struct ChatExtractionTests {
    static let dir = Paths.fixtures.appendingPathComponent("chat")

    /// extract's configuration for the chat fixture's rows on `model` (default: the fixture checkpoint), one thread.
    static func config(out: String, model: String? = nil, renderer: PromptRenderer) -> ExtractionConfig {
        var cfg = ExtractionConfig(modelPath: model ?? dir.appendingPathComponent("model-llama3").path,
                                   dataPath: dir.appendingPathComponent("model-llama3-rows.jsonl").path, outDir: out + "/shards")
        cfg.renderer = renderer
        cfg.threads = 1
        return cfg
    }

    @Test("extract --template auto --date D: ids = HF's apply_chat_template + suffix, residuals within 1e-4 of HF float32")
    func extractChatRows() throws {
        let out = tempDir("chatextract")
        defer { try? FileManager.default.removeItem(atPath: out) }
        var cfg = Self.config(out: out, renderer: PromptRenderer(template: .auto, dateString: "02 Dec 2026"))
        cfg.withEmbeddings = true
        var notes: [String] = []
        let s = try Extractor.run(cfg, log: { notes.append($0) })
        #expect(s.rows == 3 && s.skipped == 0 && s.truncated == 0)
        #expect(notes.contains { $0.hasPrefix("note: using the chat template of \(cfg.modelPath)/tokenizer_config.json") }, "\(notes)")
        let ref = try SafeTensorsFile(path: Self.dir.appendingPathComponent("model-llama3-reference.safetensors").path)
        let data = try Dataset(path: cfg.dataPath)
        let tok = try LoadedModel.tokenizer(forModel: cfg.modelPath)
        let r = try cfg.renderer.resolved(for: try LoadedModel.chatInfo(forModel: cfg.modelPath), tokenizer: tok).renderer
        var seen = 0
        var worst: Float = 0
        for path in try ShardDirectory(path: out + "/shards").shardPaths {
            let b = try Shard.read(path: path)
            #expect(b.metadata.readout?.template == "auto" && b.metadata.readout?.chat?.dateString == "02 Dec 2026")
            let w = b.layerCount * b.metadata.dModel
            for i in 0..<b.count {
                let row = Int(b.rows[i])
                let hfIDs = try ref.integers("r\(row).ids").map { Int32($0) }
                let ids = try Extractor.promptTokens(try data.rows[row].get().content, tokenizer: tok, renderer: r, maxTokens: 2048).ids
                #expect(ids == hfIDs, "row \(row)")
                #expect(Int(b.nTokens[i]) == hfIDs.count)
                let mine = Array(b.residPost[(i * w)..<((i + 1) * w)]), theirs = try ref.floats("r\(row).resid")
                #expect(mine.count == theirs.count)
                // max|a - b| / max|b|
                let e = zip(mine, theirs).map { abs($0 - $1) }.max()! / theirs.map(abs).max()!
                worst = max(worst, e)
                #expect(e < 1e-4, "row \(row): relative error \(e)")
                seen += 1
            }
        }
        #expect(seen == 3)
        print("chat extract: worst relative error \(worst)")
    }
}

extension ChatExtractionTests {
    @Test("resuming an extraction whose template reads the clock (Llama-3.2) keeps the recorded day; another --date is refused")
    func resumeKeepsDay() throws {
        let out = tempDir("chatresume")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let model = out + "/m"
        try FileManager.default.copyItem(atPath: Self.dir.appendingPathComponent("model-llama3").path, toPath: model)
        let cfgPath = model + "/tokenizer_config.json"
        var tc = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: cfgPath))) as! [String: Any]
        tc["chat_template"] = try String(contentsOf: Self.dir.appendingPathComponent("templates/llama-3.2-1b-instruct.jinja"), encoding: .utf8)
        try JSONSerialization.data(withJSONObject: tc).write(to: URL(fileURLWithPath: cfgPath))
        var cfg = Self.config(out: out, model: model, renderer: PromptRenderer(template: .auto, clockDay: "2030-01-02"))
        _ = try Extractor.run(cfg, log: { _ in })
        // The next day, without --date: the recorded day is used (before, a readout mismatch).
        cfg.renderer = PromptRenderer(template: .auto)
        var notes: [String] = []
        _ = try Extractor.run(cfg, log: { notes.append($0) })
        #expect(notes.contains { $0.hasPrefix("resuming after row") } && notes.contains { $0.contains("resuming with the day") && $0.contains("2030-01-02") }, "\(notes)")
        #expect(try ShardDirectory(path: out + "/shards").metadata.readout?.chat?.today == "2030-01-02")
        cfg.renderer = PromptRenderer(template: .auto, clockDay: "2030-01-03")
        #expect(throws: (any Error).self) { _ = try Extractor.run(cfg, log: { _ in }) }
    }

    @Test("extract --position mean / suffix-mean on a chat template (BOS written by the template): HF's mean over the same tokens",
          arguments: ["mean", "suffix-mean"])
    func chatPositions(position: String) throws {
        let out = tempDir("chatpos")
        defer { try? FileManager.default.removeItem(atPath: out) }
        var cfg = Self.config(out: out, renderer: PromptRenderer(template: .auto, dateString: "02 Dec 2026"))
        cfg.withEmbeddings = true
        cfg.position = position
        let s = try Extractor.run(cfg, log: { _ in })
        #expect(s.rows == 3 && s.skipped == 0)
        let ref = try SafeTensorsFile(path: Self.dir.appendingPathComponent("model-llama3-reference.safetensors").path)
        let key = position == "mean" ? "mean" : "suffix_mean"
        // The positions the readout picks are the reference's.
        let data = try Dataset(path: cfg.dataPath)
        let tok = try LoadedModel.tokenizer(forModel: cfg.modelPath)
        var recipe = ReadoutRecipe(renderer: cfg.renderer, maxTokens: 2048, withEmbeddings: true, tokenizer: tok)
        recipe.position = position
        let r = try cfg.renderer.resolved(for: try LoadedModel.chatInfo(forModel: cfg.modelPath), tokenizer: tok).renderer
        var seen = 0
        for path in try ShardDirectory(path: out + "/shards").shardPaths {
            let b = try Shard.read(path: path)
            #expect(b.metadata.readout?.position == position)
            let w = b.layerCount * b.metadata.dModel
            for i in 0..<b.count {
                let row = Int(b.rows[i])
                let p = try recipe.prompt(try data.rows[row].get().content, tokenizer: tok, renderer: r)
                let want = try ref.integers("r\(row).\(position == "mean" ? "mean" : "suffix")_positions").map { Int($0) }
                #expect(p.positions == want, "row \(row)")
                let mine = Array(b.residPost[(i * w)..<((i + 1) * w)]), theirs = try ref.floats("r\(row).\(key)")
                let e = zip(mine, theirs).map { abs($0 - $1) }.max()! / theirs.map(abs).max()!
                #expect(e < 1e-4, "row \(row): relative error \(e)")
                // Not the last token's residual: the average really is another vector.
                let last = try ref.floats("r\(row).resid")
                #expect(zip(mine, last).map { abs($0 - $1) }.max()! / last.map(abs).max()! > 1e-2)
                seen += 1
            }
        }
        #expect(seen == 3)
    }
}

/// The command line: extract → train → predict with the checkpoint's chat template, its GGUF, a changed
/// template refused, --override-readout, and tokenize --messages.
@Suite(.serialized) struct ChatCLITests {
    @Test("extract/train/predict with --template auto: recorded, reused, a changed template refused naming both")
    func roundTrip() throws {
        let dir = tempDir("chatcli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = dir + "/m"
        try FileManager.default.copyItem(atPath: ChatExtractionTests.dir.appendingPathComponent("model-llama3").path, toPath: model)
        // 60 chat rows from the demo data: a system prompt, a user turn, an assistant reply, the message.
        let demo = try Dataset(path: Paths.repo.appendingPathComponent("data/demo/emotions.csv").path)
        var jsonl = ""
        for case .success(let r) in demo.rows.prefix(60) {
            guard case .message(let m) = r.content else { continue }
            let row: [String: Any] = ["label": r.label, "messages": [["role": "system", "content": "Be kind."], ["role": "user", "content": "Hi"],
                                                                     ["role": "assistant", "content": "Hello!"], ["role": "user", "content": m]]]
            jsonl += String(decoding: try JSONSerialization.data(withJSONObject: row, options: [.sortedKeys]), as: UTF8.self) + "\n"
        }
        writeFile(dir + "/d.jsonl", jsonl)
        let shards = dir + "/shards", probes = dir + "/probes"
        let ex = try llamaprobeOK(["extract", "--model", model, "--data", dir + "/d.jsonl", "--out", shards, "--threads", "1"])
        #expect(ex.err.contains("note: using the chat template of \(model)/tokenizer_config.json"), "\(ex.err)")
        let recipe = try #require(try ShardDirectory(path: shards).metadata.readout)
        #expect(recipe.template == "auto" && recipe.chat?.template.hasPrefix("sha256:") == true && recipe.chat?.today == nil)
        try llamaprobeOK(["train", "--shards", shards, "--out", probes, "--epochs", "2", "--val-every", "1", "--val-fraction", "0.3"])
        let base = ["predict", "--probes", probes, "--data", dir + "/d.jsonl", "--label-column", "label", "--layer", "all", "--json", "--threads", "1"]
        let bare = try llamaprobeOK(base + ["--model", model])
        #expect(!bare.out.isEmpty && !bare.err.contains("warning"), "\(bare.err)")
        // Without --label-column: chat rows (no 'message' key) are read unlabelled, one prediction each.
        let unlabelled = try llamaprobeOK(["predict", "--probes", probes, "--data", dir + "/d.jsonl", "--json", "--threads", "1", "--model", model])
        #expect(unlabelled.out.split(separator: "\n").count == 60, "\(unlabelled.err)")
        // The GGUF quantized from it carries the template: same readout, no refusal.
        try llamaprobeOK(["quantize", "--model", model, "--out", dir + "/m.gguf"])
        let viaGGUF = try llamaprobeOK(base + ["--model", dir + "/m.gguf"])
        #expect(!viaGGUF.out.isEmpty && !viaGGUF.err.contains("chat template") && !viaGGUF.err.contains("warning"), "\(viaGGUF.err)")
        // Another template in the checkpoint: refused, both named; --template llama3 --override-readout runs with a warning.
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: model + "/tokenizer_config.json"))) as! [String: Any]
        config["chat_template"] = (config["chat_template"] as! String) + "{# edited #}"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: model + "/tokenizer_config.json"))
        let edited = try ChatTemplate(name: "checkpoint", source: config["chat_template"] as! String).sha256
        let refused = try llamaprobe(base + ["--model", model])
        #expect(refused.status != 0 && refused.err.contains(recipe.chat!.template) && refused.err.contains("sha256:" + edited), "\(refused.err)")
        let overridden = try llamaprobeOK(base + ["--model", model, "--template", "llama3", "--override-readout"])
        #expect(overridden.err.contains("warning: --override-readout") && overridden.err.contains("--template llama3 contradicts the recorded auto"), "\(overridden.err)")
    }

    @Test("tokenize --messages shows the render and the ids of a multi-turn row; --help documents the new flags")
    func tokenizeMessages() throws {
        let model = ChatExtractionTests.dir.appendingPathComponent("model-llama3").path
        let msgs = #"[{"role":"system","content":"Answer briefly."},{"role":"user","content":"Who are you?"},{"role":"assistant","content":"   I am an assistant   "},{"role":"user","content":"Another question"}]"#
        let r = try llamaprobeOK(["tokenize", "--model", model, "--date", "02 Dec 2026", "--suffix", "", "--messages", msgs])
        // transformers' render of this conversation (renders.json, llama-3.1-8b-instruct / system_multi_turn)
        let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 02 Dec 2026\n\nAnswer briefly.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        #expect(r.out.contains("prompt: \(jsonString(expected))"), "\(r.out)")
        #expect(r.out.contains("901\t<|begin_of_text|>\n904\t<|start_header_id|>"), "\(r.out)")
        let ids = try llamaprobeOK(["tokenize", "--model", model, "--date", "02 Dec 2026", "--suffix", "", "--messages", msgs, "--ids"])
        let tc = ChatReadoutTests.tokens.bpe.first { $0.template == "llama-3.1-8b-instruct" && $0.conversation == "system_multi_turn" }!
        #expect(ids.out == tc.ids.map(String.init).joined(separator: " ") + "\n")
        let bad = try llamaprobe(["tokenize", "--model", model, "--messages", "{\"role\":1}"])
        #expect(bad.status != 0 && bad.err.contains("--messages must be a JSON list"), "\(bad.err)")
        let info = try llamaprobeOK(["info", "--model", model])
        #expect(info.out.contains("chat template: \(model)/tokenizer_config.json (sha256 6903113f396c…), rendered by --template auto"), "\(info.out)")
        #expect(try llamaprobeOK(["info", "--model", Paths.model("gqa-bf16")]).out.contains("chat template: none (--template auto uses llama2-chat)"))
        for cmd in ["tokenize", "extract", "residuals", "generate", "predict"] {
            let h = try llamaprobeOK([cmd, "--help"])
            #expect(h.out.contains("--template") && h.out.contains("chatml") && h.out.contains("mistral"), "\(cmd) --help")
            if cmd != "predict" { #expect(h.out.contains("--date"), "\(cmd) --help lacks --date") }
        }
    }
}
