import Foundation

/// One turn of a conversation.
public struct ChatMessage: Codable, Equatable, Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

public struct TemplateError: LocalizedError, Equatable {
    public let reason: String
    public var errorDescription: String? { reason }
}

/// The prompt templates of the reference recipe.
public enum PromptTemplate: String, Sendable, CaseIterable {
    /// The text as given.
    case raw
    /// LLaMA-2 chat: `[INST] {message.strip()} [/INST]` then the readout suffix.
    case llama2Chat = "llama2-chat"

    /// The reference recipe's readout suffix (leading space, no trailing space).
    public static let defaultSuffix = " I think the emotional state of this user is"

    /// The suffix used when the caller gives none: the readout suffix for chat, nothing for raw.
    public var defaultSuffix: String { self == .raw ? "" : Self.defaultSuffix }
}

/// Renders messages into the exact prompt string that is then tokenized (with BOS).
public struct PromptRenderer: Sendable, Equatable {
    public var template: PromptTemplate
    public var suffix: String
    public var systemPrompt: String?

    public init(template: PromptTemplate = .llama2Chat, suffix: String? = nil, systemPrompt: String? = nil) {
        self.template = template
        self.suffix = suffix ?? template.defaultSuffix
        self.systemPrompt = systemPrompt
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
    public func render(_ message: String) -> String {
        switch template {
        case .raw:
            return message + suffix
        case .llama2Chat:
            let content = (systemPrompt.map(Self.systemBlock) ?? "") + message
            return Self.bInst + Self.strip(content) + Self.eInst + suffix
        }
    }

    /// A conversation: optional leading system turn, then user/assistant alternating, ending with user.
    /// Completed exchanges render as `<s>[INST] u [/INST] a </s>`; the first `<s>` is dropped because
    /// tokenization adds BOS.
    public func render(messages: [ChatMessage]) throws -> String {
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
