import Foundation

/// One turn of a conversation.
public struct ChatMessage: Codable, Equatable, Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

public struct TemplateError: LocalizedError, Equatable {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var errorDescription: String? { reason }
}

/// The prompt templates: the reference recipe's (raw, llama2-chat) and the chat templates rendered by the
/// Jinja renderer (the checkpoint's own with `auto`, or a built-in one: `ChatTemplate.builtin`).
public enum PromptTemplate: String, Sendable, CaseIterable {
    /// The text as given.
    case raw
    /// LLaMA-2 chat: `[INST] {message.strip()} [/INST]` then the readout suffix.
    case llama2Chat = "llama2-chat"
    /// The checkpoint's own chat template (tokenizer_config.json, chat_template.jinja or the GGUF's
    /// tokenizer.chat_template); llama2-chat for a checkpoint without one.
    case auto
    /// Llama-3.1/3.2 Instruct's format (built in).
    case llama3
    /// ChatML, Qwen2's format without Qwen's default system prompt (built in).
    case chatml
    /// Mistral-7B-Instruct v0.3's format (built in).
    case mistral

    /// Rendered by the Jinja renderer (needs `PromptRenderer.resolved` against the model first).
    public var isJinja: Bool { self != .raw && self != .llama2Chat }

    /// The names a user can pass, for messages.
    public static let choices = "llama2-chat|llama3|chatml|mistral|raw"

    /// The reference recipe's readout suffix (leading space, no trailing space).
    public static let defaultSuffix = " I think the emotional state of this user is"

    /// The suffix used when the caller gives none: the readout suffix for chat, nothing for raw.
    public var defaultSuffix: String { self == .raw ? "" : Self.defaultSuffix }
}

/// A chat template resolved for one model: the template, the special-token texts it is given, and the date.
public struct ChatSetup: Sendable, Equatable {
    public var template: ChatTemplate
    public var bosToken: String?
    public var eosToken: String?
    /// `date_string` given to the template (`--date`); nil leaves it undefined, as transformers does.
    public var dateString: String?
    /// The day `strftime_now` formats ("YYYY-MM-DD"; Llama-3.2 puts today's date in the prompt): set when the
    /// template reads the clock and no date_string is given, recorded so predict renders the same prompt.
    public var today: String?

    public static func == (a: ChatSetup, b: ChatSetup) -> Bool {
        a.template.name == b.template.name && a.template.sha256 == b.template.sha256 && a.bosToken == b.bosToken
            && a.eosToken == b.eosToken && a.dateString == b.dateString && a.today == b.today
    }

    /// noon UTC of `today` (the clock `strftime_now` reads), nil when `today` is not a YYYY-MM-DD date.
    static func clock(_ today: String) -> Date? {
        let p = today.split(separator: "-").map { Int($0) }
        guard p.count == 3, let y = p[0], let m = p[1], let d = p[2], (1...9999).contains(y), (1...12).contains(m), (1...31).contains(d) else { return nil }
        var c = DateComponents()
        c.year = y; c.month = m; c.day = d; c.hour = 12
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone(identifier: "UTC")!
        return cal.date(from: c)
    }

    /// Today's date in the local time zone (what Python's `datetime.now()` reads), as YYYY-MM-DD.
    public static func localToday(_ now: Date = Date()) -> String {
        let c = Calendar(identifier: .gregorian).dateComponents([.year, .month, .day], from: now)
        return String(format: "%04d-%02d-%02d", c.year ?? 1970, c.month ?? 1, c.day ?? 1)
    }

    func render(_ messages: [ChatMessage]) throws -> String {
        let now = today.flatMap(Self.clock) ?? Date(timeIntervalSince1970: 0)
        do {
            return try template.render(messages, bosToken: bosToken, eosToken: eosToken, dateString: dateString,
                                       now: now, timeZone: TimeZone(identifier: "UTC")!)
        } catch let e as JinjaError {
            let which = template.name == "checkpoint" ? "the checkpoint's chat template" : "the built-in \(template.name) template"
            if e.kind == .raised { throw TemplateError(reason: "\(which) refused the conversation: \(e.message)") }
            throw TemplateError(reason: "\(which) cannot be rendered (\(e.localizedDescription)); choose a template with --template \(PromptTemplate.choices)")
        }
    }
}

/// Everything about the model a chat template needs: its own template source and its special-token texts.
public struct ModelChatInfo: Sendable, Equatable {
    /// The checkpoint's chat template source; nil when it has none.
    public var template: String?
    public var bosToken: String?
    public var eosToken: String?
    /// Where the template came from (for messages).
    public var source: String
    public init(template: String?, bosToken: String?, eosToken: String?, source: String) {
        self.template = template; self.bosToken = bosToken; self.eosToken = eosToken; self.source = source
    }
}

/// Renders messages into the exact prompt string that is then tokenized (with BOS). A pure function of its
/// fields: for the chat templates (`PromptTemplate.isJinja`) `resolved` fills `chat` from the model first.
public struct PromptRenderer: Sendable, Equatable {
    public var template: PromptTemplate
    public var suffix: String
    public var systemPrompt: String?
    /// `--date "26 Jul 2024"`: the template's `date_string` (Llama-3.x's "Today Date").
    public var dateString: String?
    /// `--date 2024-07-26`: the day `strftime_now` formats instead of today (a template that reads the clock).
    public var clockDay: String?
    /// The resolved chat template (set by `resolved`).
    public var chat: ChatSetup?
    /// The suffix is the template's default (no `--suffix`): `resolved` drops its leading space after a chat
    /// template whose generation prompt ends in whitespace (Llama-3's "\n\n", ChatML's "\n"), where an answer
    /// begins without one.
    public var suffixIsDefault: Bool

    public init(template: PromptTemplate = .llama2Chat, suffix: String? = nil, systemPrompt: String? = nil, dateString: String? = nil,
                clockDay: String? = nil) {
        self.template = template
        self.suffix = suffix ?? template.defaultSuffix
        suffixIsDefault = suffix == nil
        self.systemPrompt = systemPrompt
        self.dateString = dateString
        self.clockDay = clockDay
    }

    /// `--date D`: a YYYY-MM-DD day is the clock's (`clockDay`), anything else the template's `date_string`.
    public static func date(_ d: String?) -> (dateString: String?, clockDay: String?) {
        guard let d else { return (nil, nil) }
        return ChatSetup.clock(d) != nil && d.utf8.count == 10 ? (nil, d) : (d, nil)
    }

    /// The renderer for `model`: `auto` becomes the checkpoint's template, or llama2-chat when it has none
    /// (said in the returned note); llama3/chatml/mistral become the built-in templates. `today` (a recorded
    /// date) replaces the local date for templates that read the clock. Throws when the template cannot be parsed
    /// or cannot render a one-message conversation, naming the --template choices.
    public func resolved(for model: ModelChatInfo, tokenizer: Tokenizer, today: String? = nil) throws -> (renderer: PromptRenderer, note: String?) {
        guard template.isJinja else { return (self, nil) }
        var r = self
        var note: String? = nil
        let t: ChatTemplate
        if template == .auto {
            guard let source = model.template else {
                r.template = .llama2Chat
                return (r, "note: \(model.source) has no chat template: using --template llama2-chat (the reference recipe's LLaMA-2 chat format)")
            }
            do { t = try ChatTemplate(name: "checkpoint", source: source) } catch {
                throw TemplateError(reason: "the chat template of \(model.source) cannot be rendered (\(error.localizedDescription)); choose a template with --template \(PromptTemplate.choices)")
            }
            note = "note: using the chat template of \(model.source) (sha256 \(t.sha256.prefix(12))…)"
        } else {
            guard let b = ChatTemplate.builtin(template.rawValue) else { throw TemplateError(reason: "no built-in template '\(template.rawValue)'") }
            t = b
        }
        func text(_ id: Int32) -> String? { id >= 0 && Int(id) < tokenizer.vocabSize ? tokenizer.piece(id) : nil }
        var setup = ChatSetup(template: t, bosToken: model.bosToken ?? text(tokenizer.bosID), eosToken: model.eosToken ?? text(tokenizer.eosID),
                              dateString: dateString, today: nil)
        if t.template.readsClock, dateString == nil {
            let day = today ?? clockDay
            if let day, ChatSetup.clock(day) == nil { throw TemplateError(reason: "the date '\(day)' is not YYYY-MM-DD") }
            setup.today = day ?? ChatSetup.localToday()
        } else if let clockDay {
            throw TemplateError(reason: "--date \(clockDay): this template does not read the clock (strftime_now); give its date_string instead, e.g. --date \"26 Jul 2024\"")
        }
        r.chat = setup
        // A template that cannot render the simplest conversation is refused before any row is read.
        let probe = try r.render("Hello")
        // The default readout suffix continues the assistant's answer: after a generation prompt that ends in
        // whitespace the answer starts without a space (the reference recipe's leading space follows "[/INST]").
        if suffixIsDefault, r.suffix.hasPrefix(" "), let last = probe.dropLast(r.suffix.count).unicodeScalars.last,
           Self.isPythonWhitespace(last) {
            r.suffix.removeFirst()
            r.suffixIsDefault = false
        }
        return (r, note)
    }

    /// Whether to add BOS when tokenizing `rendered`: not when the render already contains the BOS text (a
    /// chat template puts `bos_token` in; apply_chat_template then tokenizes without adding special tokens).
    public func addsBOS(to rendered: String) -> Bool {
        guard let chat, let bos = chat.bosToken, !bos.isEmpty else { return true }
        return !rendered.contains(bos)
    }

    static let bInst = "[INST] ", eInst = " [/INST]"

    static func systemBlock(_ s: String) -> String { "<<SYS>>\n" + s + "\n<</SYS>>\n\n" }

    /// Python's `str.strip()`: removes leading and trailing Unicode whitespace.
    static func strip(_ s: String) -> String {
        let scalars = s.unicodeScalars
        guard let first = scalars.firstIndex(where: { !isPythonWhitespace($0) }) else { return "" }
        let last = scalars.lastIndex(where: { !isPythonWhitespace($0) }) ?? first
        return String(scalars[first...last])
    }

    /// `str.isspace()` characters: Unicode White_Space plus the ASCII separators Python counts.
    static func isPythonWhitespace(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x09...0x0D, 0x1C...0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default:
            return false
        }
    }

    /// One user message.
    public func render(_ message: String) throws -> String {
        switch template {
        case .raw:
            return message + suffix
        case .llama2Chat:
            let content = (systemPrompt.map(Self.systemBlock) ?? "") + message
            return Self.bInst + Self.strip(content) + Self.eInst + suffix
        default:
            return try renderJinja([ChatMessage(role: "user", content: message)])
        }
    }

    /// A chat template's render of `messages` (the system prompt first when the conversation has none),
    /// with the generation prompt, then the suffix.
    func renderJinja(_ messages: [ChatMessage]) throws -> String {
        guard let chat else {
            throw TemplateError(reason: "template '\(template.rawValue)' is not resolved against a model (PromptRenderer.resolved)")
        }
        var m = messages
        if let systemPrompt, m.first?.role != "system" { m.insert(ChatMessage(role: "system", content: systemPrompt), at: 0) }
        return try chat.render(m) + suffix
    }

    /// A conversation: optional leading system turn, then user/assistant alternating, ending with user.
    /// Completed exchanges render as `<s>[INST] u [/INST] a </s>`; the first `<s>` is dropped because
    /// tokenization adds BOS.
    public func render(messages: [ChatMessage]) throws -> String {
        if template.isJinja { return try renderJinja(messages) }
        var turns = messages
        var system = systemPrompt
        if let first = turns.first, first.role == "system" {
            system = first.content
            turns.removeFirst()
        }
        guard template == .llama2Chat else {
            throw TemplateError(reason: "multi-turn messages need the llama2-chat template, not '\(template.rawValue)'")
        }
        guard !turns.isEmpty else { throw TemplateError(reason: "the conversation has no user message") }
        for (i, m) in turns.enumerated() {
            let expected = i % 2 == 0 ? "user" : "assistant"
            guard m.role == expected else {
                throw TemplateError(reason: "message \(i + 1) has role '\(m.role)' where '\(expected)' was expected (roles must alternate user/assistant after an optional system message)")
            }
        }
        guard turns.count % 2 == 1 else {
            throw TemplateError(reason: "the conversation must end with a user message (the readout follows the last [/INST])")
        }
        var out = ""
        for i in stride(from: 0, to: turns.count, by: 2) {
            var user = turns[i].content
            if i == 0, let system { user = Self.systemBlock(system) + user }
            out += "<s>" + Self.bInst + Self.strip(user) + Self.eInst
            if i + 1 < turns.count { out += " " + Self.strip(turns[i + 1].content) + " </s>" }
        }
        return String(out.dropFirst(3)) + suffix
    }
}
