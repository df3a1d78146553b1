import Foundation
import Formats

/// A chat template (Jinja source) ready to render conversations as transformers'
/// `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)` does.
public struct ChatTemplate: @unchecked Sendable {
    /// "llama3", "chatml", "mistral" for the built-in templates; "checkpoint" for a model's own.
    public let name: String
    public let source: String
    /// sha256 of the source's UTF-8 bytes (lower-case hex).
    public let sha256: String
    let template: JinjaTemplate

    public init(name: String, source: String) throws {
        self.name = name
        self.source = source
        sha256 = SHA256.hex(Array(source.utf8).withUnsafeBytes { raw -> [UInt8] in
            var h = SHA256()
            h.update(raw)
            return h.finalize()
        })
        template = try JinjaTemplate(source)
    }

    /// The context transformers gives a template: `messages`, `add_generation_prompt`, `tools` (JSON schemas;
    /// none by default) and `documents` (none), the special tokens that are set, and `date_string` only when given.
    public func render(_ messages: [ChatMessage], bosToken: String?, eosToken: String?, dateString: String? = nil,
                       now: Date = Date(), timeZone: TimeZone = .current, addGenerationPrompt: Bool = true,
                       tools: [JinjaValue]? = nil) throws -> String {
        var context: [String: JinjaValue] = [
            "messages": .list(messages.map { .dict(JinjaDict([("role", .string($0.role)), ("content", .string($0.content))])) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "tools": tools.map { .list($0) } ?? .none,
            "documents": .none,
        ]
        if let bosToken { context["bos_token"] = .string(bosToken) }
        if let eosToken { context["eos_token"] = .string(eosToken) }
        if let dateString { context["date_string"] = .string(dateString) }
        return try template.render(context, now: now, timeZone: timeZone)
    }

    /// The built-in templates, written for this project (not copies of the families' files): each renders a
    /// conversation of system/user/assistant messages as its family's own template does (checked against
    /// transformers' renders of the real templates, Tests/fixtures/chat).
    public static func builtin(_ name: String) -> ChatTemplate? {
        guard let s = builtinSources[name] else { return nil }
        return try? ChatTemplate(name: name, source: s)
    }

    static let builtinSources: [String: String] = [
        // Llama-3.1 / 3.2 Instruct without tools: a system block with the knowledge and today dates (the
        // given date_string, else Llama-3.1's fixed "26 Jul 2024"), the system message trimmed, each turn
        // trimmed between header ids and <|eot_id|>.
        "llama3": """
        {{- bos_token -}}
        {%- if date_string is not defined %}{% set date_string = "26 Jul 2024" %}{% endif -%}
        {%- set ns = namespace(system="", first=0) -%}
        {%- if messages and messages[0].role == "system" -%}
            {%- set ns.system = messages[0].content | trim -%}
            {%- set ns.first = 1 -%}
        {%- endif -%}
        {{- "<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: " ~ date_string ~ "\\n\\n" ~ ns.system ~ "<|eot_id|>" -}}
        {%- for m in messages[ns.first:] -%}
            {{- "<|start_header_id|>" ~ m.role ~ "<|end_header_id|>\\n\\n" ~ (m.content | trim) ~ "<|eot_id|>" -}}
        {%- endfor -%}
        {%- if add_generation_prompt -%}{{- "<|start_header_id|>assistant<|end_header_id|>\\n\\n" -}}{%- endif -%}
        """,
        // ChatML (Qwen2 / Qwen2.5 without tools, minus Qwen's default system prompt): each message as
        // <|im_start|>role\ncontent<|im_end|>\n, untrimmed.
        "chatml": """
        {%- for m in messages -%}
            {{- "<|im_start|>" ~ m.role ~ "\\n" ~ m.content ~ "<|im_end|>\\n" -}}
        {%- endfor -%}
        {%- if add_generation_prompt -%}{{- "<|im_start|>assistant\\n" -}}{%- endif -%}
        """,
        // Mistral-7B-Instruct v0.3 without tools: BOS, [INST] user[/INST], the system message before the
        // first user message, assistant replies trimmed after a space and followed by EOS; roles must
        // alternate user/assistant after the optional system message.
        "mistral": """
        {%- set ns = namespace(system=none, first=0) -%}
        {%- if messages and messages[0].role == "system" -%}
            {%- set ns.system = messages[0].content -%}
            {%- set ns.first = 1 -%}
        {%- endif -%}
        {{- bos_token -}}
        {%- for m in messages[ns.first:] -%}
            {%- if (m.role == "user") != (loop.index0 % 2 == 0) -%}
                {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") -}}
            {%- endif -%}
            {%- if m.role == "user" -%}
                {%- if loop.first and ns.system is not none -%}
                    {{- "[INST] " ~ ns.system ~ "\\n\\n" ~ m.content ~ "[/INST]" -}}
                {%- else -%}
                    {{- "[INST] " ~ m.content ~ "[/INST]" -}}
                {%- endif -%}
            {%- elif m.role == "assistant" -%}
                {{- " " ~ (m.content | trim) ~ eos_token -}}
            {%- else -%}
                {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") -}}
            {%- endif -%}
        {%- endfor -%}
        """,
    ]
}
