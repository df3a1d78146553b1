import Foundation
import Model
import Testing

/// The Jinja renderer against transformers' renders of the real chat templates (Tests/fixtures/chat, made by
/// Tests/fixtures/chat/make_chat_fixtures.py), the built-in templates against the same renders, and the
/// renderer's errors and limits.
@Suite struct ChatTemplateTests {
    struct Case: Decodable {
        let template: String
        let conversation: String
        let bos_token: String?
        let eos_token: String?
        let date_string: String?
        let text: String?
        let error: String?
    }
    struct Renders: Decodable {
        let conversations: [String: [ChatMessage]]
        let cases: [Case]
    }

    static let dir = Fixtures.root.appendingPathComponent("chat")
    static let renders: Renders = {
        let data = try! Data(contentsOf: dir.appendingPathComponent("renders.json"))
        return try! JSONDecoder().decode(Renders.self, from: data)
    }()
    static func source(_ name: String) throws -> String {
        try String(contentsOf: dir.appendingPathComponent("templates/\(name).jinja"), encoding: .utf8)
    }

    static func render(_ t: ChatTemplate, _ c: Case) -> Result<String, Error> {
        Result { try t.render(renders.conversations[c.conversation]!, bosToken: c.bos_token, eosToken: c.eos_token, dateString: c.date_string) }
    }

    @Test("each real template renders every conversation byte for byte as transformers does (errors too)",
          arguments: ["llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct-v0.1",
                      "mistral-7b-instruct-v0.2", "mistral-7b-instruct-v0.3", "llama-2-7b-chat"])
    func realTemplates(name: String) throws {
        let t = try ChatTemplate(name: "checkpoint", source: try Self.source(name))
        let cases = Self.renders.cases.filter { $0.template == name }
        #expect(cases.count >= 13)
        for c in cases {
            switch Self.render(t, c) {
            case .success(let text):
                #expect(c.error == nil, "\(name)/\(c.conversation): rendered where transformers raised \(c.error ?? "")")
                #expect(text == c.text, "\(name)/\(c.conversation) date=\(c.date_string ?? "-")")
            case .failure(let e):
                let j = e as? JinjaError
                #expect(j?.kind == .raised && j?.message == c.error, "\(name)/\(c.conversation): \(e.localizedDescription)")
            }
        }
    }

    struct ToolRenders: Decodable { let tool_cases: [Case] }

    /// The fixture's TOOLS, in its key order (tojson prints dicts in insertion order).
    static let tools: [JinjaValue] = {
        func d(_ p: [(String, JinjaValue)]) -> JinjaValue { .dict(JinjaDict(p)) }
        return [d([("type", .string("function")), ("function", d([
            ("name", .string("get_weather")), ("description", .string("Get the weather in a city, \"quoted\" and ünïcode")),
            ("parameters", d([("type", .string("object")),
                              ("properties", d([("city", d([("type", .string("string")), ("description", .string("The city"))])),
                                                ("days", d([("type", .string("integer")), ("enum", .list([.int(1), .int(2), .int(3)]))]))])),
                              ("required", .list([.string("city")]))])),
            ("return", d([("type", .string("string"))])),
        ]))])]
    }()

    @Test("the tools branches (Llama-3.1/3.2 tools in the user message, Qwen2.5's <tools>, Mistral v0.3's [AVAILABLE_TOOLS]) render as transformers does")
    func toolBranches() throws {
        let data = try Data(contentsOf: Self.dir.appendingPathComponent("renders.json"))
        let cases = try JSONDecoder().decode(ToolRenders.self, from: data).tool_cases
        #expect(cases.count == 12)
        for c in cases {
            let t = try ChatTemplate(name: "checkpoint", source: try Self.source(c.template))
            let text = try t.render(Self.renders.conversations[c.conversation]!, bosToken: c.bos_token, eosToken: c.eos_token,
                                    dateString: c.date_string, tools: Self.tools)
            #expect(text == c.text, "\(c.template)/\(c.conversation) with tools")
        }
    }

    @Test("the fixtures can fail: a changed conversation renders differently and a raising case is an error")
    func sensitivity() throws {
        let t = try ChatTemplate(name: "checkpoint", source: try Self.source("llama-3.1-8b-instruct"))
        let c = try #require(Self.renders.cases.first { $0.template == "llama-3.1-8b-instruct" && $0.conversation == "whitespace" && $0.date_string == nil })
        let text = try t.render(Self.renders.conversations["whitespace"]!, bosToken: c.bos_token, eosToken: c.eos_token)
        #expect(text == c.text)
        let other = try t.render(Self.renders.conversations["whitespace"]!, bosToken: c.bos_token, eosToken: c.eos_token, dateString: "01 Jan 2025")
        #expect(other != c.text)
        let v1 = try ChatTemplate(name: "checkpoint", source: try Self.source("mistral-7b-instruct-v0.1"))
        #expect(throws: JinjaError(kind: .raised, message: "Conversation roles must alternate user/assistant/user/assistant/...", line: 1)) {
            try v1.render([ChatMessage(role: "user", content: "a"), ChatMessage(role: "user", content: "b")], bosToken: "<s>", eosToken: "</s>")
        }
    }

    @Test("Llama-3.2's strftime_now reads the clock it is given: '%d %b %Y'")
    func strftimeNow() throws {
        let t = try ChatTemplate(name: "checkpoint", source: try Self.source("llama-3.2-1b-instruct"))
        let now = Date(timeIntervalSince1970: 1_764_633_600)  // 2025-12-02 00:00:00 UTC
        let text = try t.render([ChatMessage(role: "user", content: "hi")], bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>",
                                now: now, timeZone: TimeZone(identifier: "UTC")!)
        #expect(text.contains("Today Date: 02 Dec 2025\n\n"))
        let given = try t.render([ChatMessage(role: "user", content: "hi")], bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>",
                                 dateString: "05 May 2024", now: now)
        #expect(given.contains("Today Date: 05 May 2024\n\n"))
    }

    /// The cases a built-in template must reproduce: `family`'s renders, with `adjust` applied to the expected text.
    func checkBuiltin(_ name: String, against family: String, skip: Set<String> = [], adjust: (Case, String) -> String = { $1 }) throws {
        let t = try #require(ChatTemplate.builtin(name))
        var compared = 0
        for c in Self.renders.cases where c.template == family && !skip.contains(c.conversation) {
            switch Self.render(t, c) {
            case .success(let text):
                #expect(c.text.map { adjust(c, $0) } == text, "\(name) vs \(family)/\(c.conversation) date=\(c.date_string ?? "-")")
            case .failure(let e):
                #expect((e as? JinjaError)?.message == c.error, "\(name) vs \(family)/\(c.conversation): \(e.localizedDescription)")
            }
            compared += 1
        }
        #expect(compared >= 10)
    }

    @Test("built-in llama3 renders as Llama-3.1-8B-Instruct and Llama-3.2-1B-Instruct (date given) do")
    func builtinLlama3() throws {
        try checkBuiltin("llama3", against: "llama-3.1-8b-instruct")
        try checkBuiltin("llama3", against: "llama-3.2-1b-instruct")
    }

    @Test("built-in mistral renders as Mistral-7B-Instruct-v0.3 does")
    func builtinMistral() throws {
        try checkBuiltin("mistral", against: "mistral-7b-instruct-v0.3")
    }

    @Test("built-in chatml renders as Qwen2.5-7B-Instruct does, without Qwen's default system prompt")
    func builtinChatML() throws {
        let qwenDefault = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        // (Qwen's template drops a message of another role, "narrator"; ChatML renders every role.)
        try checkBuiltin("chatml", against: "qwen2.5-7b-instruct", skip: ["other_role"]) { c, text in
            Self.renders.conversations[c.conversation]!.first?.role == "system" ? text : String(text.dropFirst(qwenDefault.count))
        }
    }
}

/// Small templates, one construct each, against transformers' own Jinja environment (renders.json "snippets").
@Suite struct JinjaSnippetTests {
    struct Snippet: Decodable {
        let source: String
        let text: String?
        let error: String?
    }
    struct File: Decodable { let snippets: [Snippet] }

    static let snippets: [Snippet] = {
        let data = try! Data(contentsOf: ChatTemplateTests.dir.appendingPathComponent("renders.json"))
        return try! JSONDecoder().decode(File.self, from: data).snippets
    }()

    static let context: [String: JinjaValue] = [
        "messages": .list([("system", " s "), ("user", "u1"), ("assistant", "a1")].map {
            .dict(JinjaDict([("role", .string($0.0)), ("content", .string($0.1))]))
        }),
        "name": .string("n"),
        "d": .dict(JinjaDict([("b", .list([.int(1), .string("x")])), ("a", .none)])),
    ]

    @Test("every snippet renders as transformers renders it, or fails where it fails")
    func snippets() throws {
        #expect(Self.snippets.count >= 30)
        for s in Self.snippets {
            let result = Result { try JinjaTemplate(s.source).render(Self.context) }
            switch result {
            case .success(let text):
                #expect(s.error == nil, "\(s.source): rendered \(text.debugDescription) where transformers failed: \(s.error ?? "")")
                #expect(text == s.text, "\(s.source)")
            case .failure(let e):
                #expect(s.error != nil, "\(s.source): \(e.localizedDescription)")
                #expect(e is JinjaError)
            }
        }
    }

    @Test("errors name the construct and the line; raise_exception carries the template's message")
    func errors() throws {
        func message(_ source: String) -> String {
            do { _ = try JinjaTemplate(source).render(Self.context); return "rendered" } catch { return error.localizedDescription }
        }
        #expect(message("a\n{{ raise_exception('boom: ' ~ name) }}") == "the chat template raised an error: boom: n")
        #expect(message("a\nb\n{% for %}") == "chat template line 3: unexpected 'end of the tag' where an expression should start"
                || message("a\nb\n{% for %}").hasPrefix("chat template line 3:"))
        #expect(message("x\n{{ name | nosuchfilter }}") == "chat template line 2: the filter 'nosuchfilter' is not supported")
        #expect(message("{% include 'x' %}") == "chat template line 1: the statement {% include %} is not supported")
        #expect(message("\n\n{{ x.y }}") == "chat template line 3: 'x' is undefined")
        #expect(message("{{ 1 + 'a' }}") == "chat template line 1: unsupported operand type(s) for +: 'int' and 'str'")
        #expect(message("{% if true %}x") == "chat template line 1: {% if %} is never closed (expected {% elif or else or endif %})")
        #expect(message("{{ 'abc }}") == "chat template line 1: a string literal is never closed")
        #expect(message("{{ name is nosuchtest }}") == "chat template line 1: the test 'nosuchtest' is not supported")
        #expect(message("{% endfor %}") == "chat template line 1: {% endfor %} without a matching opening tag")
    }

    @Test("hostile templates end in errors: overflow, runaway loops, huge output, deep nesting, recursion")
    func limits() throws {
        func message(_ source: String) -> String {
            do { _ = try JinjaTemplate(source).render(Self.context); return "rendered" } catch { return error.localizedDescription }
        }
        #expect(message("{{ 9223372036854775807 + 1 }}").contains("integer overflow"))
        #expect(message("{{ 2 ** 70 }}").contains("integer overflow"))
        #expect(message("{{ 99999999999999999999 }}").contains("too large"))
        #expect(message("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}").contains("loop iterations"))
        #expect(message("{{ 'x' * 100000000 }}").contains("too long"))
        #expect(message("{% set s = 'x' * 1000 %}{% for i in range(20000) %}{{ s }}{% endfor %}").contains("output grew past"))
        #expect(message(String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000)).contains("nested more than") ||
                message("{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + " }}").contains("nested more than"))
        #expect(message(String(repeating: "{% if true %}", count: 500) + String(repeating: "{% endif %}", count: 500)).contains("nested more than"))
        #expect(message("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").contains("macro calls nested more than"))
        #expect(message("{{ range(9223372036854775807) }}").contains("too long"))
        // Long left-nested chains are as deep as they are long; values built in a loop stay bounded.
        #expect(message("{{ " + String(repeating: "1 + ", count: 5000) + "1 }}").contains("nested more than"))
        #expect(message("{{ name" + String(repeating: ".a", count: 5000) + " }}").contains("nested more than"))
        #expect(message("{{ name" + String(repeating: " | trim", count: 5000) + " }}").contains("nested more than"))
        #expect(message("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}").contains("grew past"))
        #expect(message("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}").contains("grew past"))
        #expect(message("{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}").contains("items"))
        #expect(message("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}").contains("nested more than"))
        #expect(message("{% set ns = namespace(h=none) %}{% for i in range(100000) %}{% set ns.h = namespace(n=ns.h) %}{% endfor %}").contains("nested more than"))
        #expect(message("{% set ns = namespace() %}{% set ns.me = ns %}").contains("nested more than"))
        #expect(message(String(repeating: "{% set x = [x] %}", count: 2000)).contains("nested more than"))
        #expect(message("{% set ns = namespace(l=[]) %}{% for i in range(1000000) %}{% set ns.l = ns.l + [i] %}{% endfor %}").contains("list or dict elements"))
        #expect(message("{{ " + String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000) + " }}").contains("nested more than"))
    }
}

/// Mutated real templates (seeded): every one ends in a render or a JinjaError, quickly; none crashes.
@Suite struct JinjaMutationTests {
    @Test("2,100 mutations of the seven real templates end in a render or a JinjaError")
    func mutations() throws {
        let names = ["llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct-v0.1",
                     "mistral-7b-instruct-v0.2", "mistral-7b-instruct-v0.3", "llama-2-7b-chat"]
        let fragments = ["{%", "%}", "{{", "}}", "{#", "#}", "-", "(", ")", "[", "]", "'", "\"", " if ", " for ", " in ", "|", ".",
                         ",", ":", "endif", "endfor", "{% set ns.x = ns %}", "{% for i in range(9999) %}", "**", "~", " is ", " not ",
                         "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "loop.", "namespace(", "\\", "\n", "9999999999999999999"]
        var state: UInt64 = 0x9E3779B97F4A7C15
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(max(n, 1)))
        }
        let messages = [ChatMessage(role: "system", content: "s"), ChatMessage(role: "user", content: "u"),
                        ChatMessage(role: "assistant", content: "a"), ChatMessage(role: "user", content: "v")]
        var rendered = 0, failed = 0
        let start = Date()
        for name in names {
            let source = Array(try ChatTemplateTests.source(name).unicodeScalars)
            for _ in 0..<300 {
                var s = source
                for _ in 0..<(1 + next(4)) {
                    let at = next(s.count)
                    switch next(4) {
                    case 0: s.removeSubrange(at..<min(s.count, at + 1 + next(12)))
                    case 1: s.insert(contentsOf: fragments[next(fragments.count)].unicodeScalars, at: at)
                    case 2: let len = min(s.count - at, 1 + next(40)); s.insert(contentsOf: s[at..<(at + len)], at: min(s.count, at + len))
                    default: s.replaceSubrange(at..<min(s.count, at + 1), with: fragments[next(fragments.count)].unicodeScalars)
                    }
                }
                do {
                    let t = try ChatTemplate(name: "checkpoint", source: String(String.UnicodeScalarView(s)))
                    _ = try t.render(messages, bosToken: "<s>", eosToken: "</s>", dateString: nil, now: Date(timeIntervalSince1970: 0))
                    rendered += 1
                } catch is JinjaError {
                    failed += 1
                }
            }
        }
        print("mutations: \(rendered) rendered, \(failed) errors in \(Date().timeIntervalSince(start)) s")
        #expect(rendered + failed == 2100 && rendered > 100 && failed > 100)
    }
}
