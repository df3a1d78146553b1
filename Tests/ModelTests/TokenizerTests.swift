import Foundation
import Model
import Testing
import Synchronization

@Suite struct TokenizerTests {
    @Test("Meta's LLaMA-2 tokenizer gives HF LlamaTokenizer's ids on every committed string")
    func llama2MatchesHF() throws {
        let tok = try Tokenizer(path: Fixtures.llama2Tokenizer)
        #expect(tok.vocabSize == 32000 && tok.bosID == 1 && tok.eosID == 2 && tok.unkID == 0)
        #expect(Fixtures.llama2TokenCases.count >= 30)
        for c in Fixtures.llama2TokenCases {
            #expect(try tok.encode(c.text) == c.ids, "text: \(c.text.debugDescription)")
        }
    }

    @Test("the fixture tokenizer gives HF's ids for every case, after the template")
    func fixtureCases() throws {
        let tok = try Tokenizer(path: Fixtures.root.appendingPathComponent("tokenizer/fixture.model").path)
        for c in Fixtures.cases {
            #expect(try tok.encode(c.rendered) == c.ids, "case \(c.name)")
        }
    }

    @Test("literal special pieces map to their ids; without them the text is one SentencePiece call")
    func specials() throws {
        let tok = try Tokenizer(path: Fixtures.llama2Tokenizer)
        #expect(try tok.encode("Hello world") == [1, 15043, 3186])
        #expect(try tok.encode("a</s><s>b") == [1] + (try tok.encodePlain(Array("a".utf8))) + [2, 1] + (try tok.encodePlain(Array("b".utf8))))
        #expect(try tok.encode("<unk>") == [1, 0])
        #expect(try tok.encode("", addBOS: true) == [1])
        #expect(try tok.encode("Hello", addBOS: false) == [15043])
        #expect(try tok.decode([15043, 3186]) == "Hello world")
        #expect(tok.piece(15043) == "▁Hello")
    }

    @Test("a file that is not a SentencePiece model is refused with its path")
    func badModel() throws {
        let dir = temporaryDirectory()
        let path = dir + "/tokenizer.model"
        try Data("definitely not a protobuf".utf8).write(to: URL(fileURLWithPath: path))
        #expect { try Tokenizer(path: path) } throws: { ($0 as? TokenizerError)?.source == path }
        #expect { try Tokenizer(path: dir + "/missing.model") } throws: { "\($0.localizedDescription)".contains("missing.model") }
    }
}

@Suite struct TemplateTests {
    @Test("rendered prompts equal the Python reference rendering for every case")
    func renderMatchesReference() throws {
        for c in Fixtures.cases {
            #expect(try c.render() == c.rendered, "case \(c.name)")
        }
    }

    @Test("the llama2-chat template text, exactly")
    func exactText() throws {
        let r = PromptRenderer()
        #expect(try r.render("  I am fine.\n") == "[INST] I am fine. [/INST] I think the emotional state of this user is")
        let s = PromptRenderer(template: .llama2Chat, suffix: "", systemPrompt: "Be brief.")
        #expect(try s.render(" hi ") == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n hi [/INST]")
        let multi = try PromptRenderer(suffix: "!").render(messages: [
            ChatMessage(role: "user", content: " a "), ChatMessage(role: "assistant", content: "b "),
            ChatMessage(role: "user", content: "c"),
        ])
        #expect(multi == "[INST] a [/INST] b </s><s>[INST] c [/INST]!")
        #expect(try PromptRenderer(template: .raw).render(" x\n") == " x\n")
    }

    @Test("malformed conversations are refused with the reason")
    func badConversations() {
        let r = PromptRenderer()
        #expect(throws: TemplateError.self) { try r.render(messages: []) }
        #expect(throws: TemplateError.self) {
            try r.render(messages: [ChatMessage(role: "user", content: "a"), ChatMessage(role: "assistant", content: "b")])
        }
        #expect(throws: TemplateError.self) {
            try r.render(messages: [ChatMessage(role: "assistant", content: "a")])
        }
    }
}

@Suite struct TokenizerTrainingTests {
    /// The test runner's own output goes to stderr: trainings on several threads must leave fd 2 where it was.
    /// (spm_train used to point fd 2 at /dev/null around each call; two overlapping calls restored each other's
    /// redirection and left the process's stderr on /dev/null: a test run's output stopped mid-run, status 0.)
    @Test("training tokenizers on several threads at once leaves the process's stderr alone")
    func concurrentTrainingKeepsStderr() throws {
        func identity() -> (UInt, UInt) {
            var st = stat()
            _ = fstat(2, &st)
            return (UInt(st.st_dev), UInt(st.st_ino))
        }
        let before = identity()
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            do { _ = try Tokenizer.train(corpus: Fixtures.corpus, vocabSize: 512 + 8 * i) } catch { print("training \(i): \(error)"); failures.withLock { $0 += 1 } }
            let now = identity()
            if now != before { failures.withLock { $0 += 100 } }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(identity() == before)
    }
}
