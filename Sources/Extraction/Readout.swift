import Foundation
import Model
import Probe
import Formats

/// Applying a readout recipe with a model's tokenizer: the one path from a row to the tokens a probe reads and
/// the positions read among them (`prompt`; extract and predict come through here, residuals through `tokens`).
extension ReadoutRecipe {
    /// The recipe of a renderer (resolved, for the chat templates) and token budget with `tokenizer`.
    public init(renderer: PromptRenderer, maxTokens: Int, withEmbeddings: Bool, tokenizer: Tokenizer) {
        self.init(template: renderer.template.rawValue, suffix: renderer.suffix, systemPrompt: renderer.systemPrompt,
                  maxTokens: maxTokens, withEmbeddings: withEmbeddings, tokenizer: Self.fingerprint(of: tokenizer))
        chat = renderer.chat.map { ChatRecord(template: "sha256:" + $0.template.sha256, dateString: $0.dateString, today: $0.today) }
    }

    /// The recorded renderer, not yet resolved against a model (`renderer(for:tokenizer:)`).
    public var renderer: PromptRenderer {
        get throws {
            guard let t = PromptTemplate(rawValue: template) else {
                throw ExtractionError("readout recipe: template '\(template)' is not one of \(PromptTemplate.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return PromptRenderer(template: t, suffix: suffix, systemPrompt: systemPrompt, dateString: chat?.dateString)
        }
    }

    /// The recorded renderer resolved against `model`, with the recorded date; refused (naming both) when the
    /// template the model gives is not the one recorded.
    public func renderer(for model: ModelChatInfo, tokenizer: Tokenizer) throws -> PromptRenderer {
        let base = try renderer
        guard base.template.isJinja else { return base }
        let r = try base.resolved(for: model, tokenizer: tokenizer, today: chat?.today).renderer
        // No record (--override-readout with another --template, imported activations): nothing to check.
        guard let chat else { return r }
        let now = r.chat.map { "sha256:" + $0.template.sha256 }
        guard now == chat.template else {
            let mine = "template \(template) (\(chat.template))"
            let theirs = r.chat == nil ? "has no chat template" : "gives \(template == "auto" ? "its own" : "the built-in \(template)") chat template \(now ?? "")"
            throw ExtractionError("the readout was rendered with \(mine), but \(model.source) \(theirs): the prompts would differ; "
                + "use the checkpoint the readout was made with, or pass --template \(PromptTemplate.choices) with --override-readout")
        }
        return r
    }

    /// The tokens the model reads for one row, and whether the prompt was cut to `maxTokens`; the chat
    /// templates need the model's (`renderer(for:tokenizer:)`, resolved once for many rows).
    public func tokens(_ content: DatasetRow.Content, tokenizer: Tokenizer, renderer resolved: PromptRenderer? = nil) throws -> (ids: [Int32], truncated: Bool) {
        try Extractor.promptTokens(content, tokenizer: tokenizer, renderer: try resolved ?? renderer, maxTokens: maxTokens)
    }

    /// The tokens the model reads for one row and the positions whose activations are read (averaged when
    /// several): the last for `last`; for `mean` the tokens of the row's message (the last user message's
    /// content), for `suffix-mean` those of the readout suffix, by the rule of `positions(in:region:tokenizer:)`.
    /// The chat templates need the model's renderer (`renderer(for:tokenizer:)`, resolved once for many rows).
    public func prompt(_ content: DatasetRow.Content, tokenizer: Tokenizer, renderer resolved: PromptRenderer? = nil) throws -> ReadoutPrompt {
        let r = try resolved ?? renderer
        let e = try Extractor.encodePrompt(try r.render(content), renderer: r, tokenizer: tokenizer, maxTokens: maxTokens)
        guard !e.ids.isEmpty else { throw ExtractionError("the prompt has no tokens") }
        let region: Range<Int>
        switch position {
        case "last": return ReadoutPrompt(ids: e.ids, truncated: e.truncated, positions: [e.ids.count - 1])
        case "mean":
            region = try Self.span(in: e.text, what: "the message") { try r.render(content.replacingLastUserMessage(with: $0)) }
        case "suffix-mean":
            guard !suffix.isEmpty else { throw ExtractionError("--position suffix-mean: the readout suffix is empty (pass --suffix TEXT)") }
            region = try Self.span(in: e.text, what: "the readout suffix") { var s = r; s.suffix = $0; return try s.render(content) }
        default: throw ExtractionError("readout recipe: position '\(position)' is not one of \(Self.positions.joined(separator: ", "))")
        }
        let p = try Self.positions(in: e, region: region, tokenizer: tokenizer, position: position)
        guard !p.isEmpty else {
            throw ExtractionError(e.truncated
                ? "--position \(position): no token of \(position == "mean" ? "the message" : "the readout suffix") is left after cutting the prompt to --max-tokens \(maxTokens) (content is dropped from the start); raise --max-tokens"
                : "--position \(position): \(position == "mean" ? "the message" : "the readout suffix") has no token of its own")
        }
        return ReadoutPrompt(ids: e.ids, truncated: e.truncated, positions: p)
    }

    /// The one hook point probes with this recipe read.
    public var probeHook: Hook {
        get throws {
            let h = hookList
            guard h.count == 1, let hook = Hook(rawValue: h[0]) else {
                throw ExtractionError("readout recipe: probes read one hook point; this recipe lists \(h.joined(separator: ","))")
            }
            return hook
        }
    }

    /// Stands for the value whose span is sought; text never contains it (private-use code points).
    static let sentinel = "\u{E000}llamaprobe-span\u{E001}"

    /// The byte range of a value in `text` (the prompt rendered with it), found without knowing the template:
    /// `render(sentinel)` must hold the sentinel once; the bytes before it must begin `text` and the bytes after
    /// it must end it; what lies between is the value as rendered (a template may strip it).
    static func span(in text: [UInt8], what: String, render: (String) throws -> String) throws -> Range<Int> {
        let marked = Array(try render(sentinel).utf8), s = Array(sentinel.utf8)
        var hits: [Int] = []
        if marked.count >= s.count {
            for i in 0...(marked.count - s.count) where marked[i] == s[0] && Array(marked[i..<(i + s.count)]) == s { hits.append(i) }
        }
        guard hits.count == 1, let at = hits.first else {
            throw ExtractionError("cannot locate \(what) in the rendered prompt: the template renders it \(hits.count) times, not once")
        }
        let before = marked[..<at], after = marked[(at + s.count)...]
        guard text.count >= before.count + after.count, text.starts(with: before), text.reversed().starts(with: after.reversed()) else {
            throw ExtractionError("cannot locate \(what) in the rendered prompt: the template renders the text around it differently with another value")
        }
        return before.count..<(text.count - after.count)
    }

    /// The positions (indices into `e.ids`) of the tokens that belong to `region`, a byte range of the
    /// rendered text. The rule: each token spells bytes (`Tokenizer.pieceBytes`: `▁` is a space, byte pieces
    /// their byte, control pieces their text); walking the text from where its tokenization began, a token
    /// takes the bytes it spells, or, when it starts with a space the text lacks there (SentencePiece's dummy
    /// prefix), the rest of them; the BOS the tokenizer adds takes none. A token belongs to the region when it
    /// takes at least one byte and its last byte lies in the region. (Tests/fixtures/hooks/make_readout_fixtures.py
    /// applies the same rule.) A tokenizer whose pieces do not spell the text (a normalizer that rewrites it)
    /// is refused.
    static func positions(in e: Extractor.EncodedPrompt, region: Range<Int>, tokenizer: Tokenizer, position: String) throws -> [Int] {
        var end = [Int](repeating: -1, count: e.encoded.count)   // one past the token's last byte; -1: takes none
        var at = e.start
        let text = e.text
        for (k, id) in e.encoded.enumerated() {
            if k == 0 && e.addedBOS { continue }
            let b = tokenizer.pieceBytes(id)
            func matches(_ p: ArraySlice<UInt8>) -> Bool { at + p.count <= text.count && text[at..<(at + p.count)].elementsEqual(p) }
            let took: Int
            if matches(b[...]) { took = b.count }
            else if b.first == 0x20, matches(b.dropFirst()) { took = b.count - 1 }
            else {
                throw ExtractionError("--position \(position): token \(k) (\(jsonString(tokenizer.piece(id)))) does not spell the prompt at byte \(at): this tokenizer rewrites the text, so only --position last can be used with it")
            }
            at += took
            if took > 0 { end[k] = at }
        }
        return e.kept.enumerated().compactMap { i, k in
            end[k] > 0 && region.contains(end[k] - 1) ? i : nil
        }
    }

    /// sha256 over the tokenizer's pieces and scores in id order; trailing `[PADn]` pieces (added to fill
    /// a GGUF's embedding rows) are left out, so a tokenizer.model and the GGUF vocabulary made from it agree.
    public static func fingerprint(of t: Tokenizer) -> String {
        var n = t.vocabSize
        while n > 0, t.piece(Int32(n - 1)).hasPrefix("[PAD"), t.score(Int32(n - 1)) == -1000 { n -= 1 }
        var h = SHA256()
        for id in 0..<n {
            let p = t.pieceBytes(Int32(id))
            h.update(Array(String(p.count).utf8) + [0x3A] + p)
            var s = t.score(Int32(id)).bitPattern
            withUnsafeBytes(of: &s) { h.update($0) }
        }
        return "sha256:" + h.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

/// What a readout reads from one row: the tokens, whether they were cut to the budget, and the positions
/// (indices into `ids`) whose activations are read, averaged when there are several.
public struct ReadoutPrompt: Sendable, Equatable {
    public var ids: [Int32]
    public var truncated: Bool
    public var positions: [Int]
}

extension PromptRenderer {
    /// A dataset row's content as the prompt text.
    public func render(_ content: DatasetRow.Content) throws -> String {
        switch content {
        case .message(let m): return try render(m)
        case .conversation(let t): return try render(messages: t.map { ChatMessage(role: $0.role, content: $0.content) })
        }
    }
}

extension DatasetRow.Content {
    /// The content with its message (a conversation's last user message) replaced by `text`.
    func replacingLastUserMessage(with text: String) -> DatasetRow.Content {
        switch self {
        case .message: return .message(text)
        case .conversation(var t):
            if let i = t.lastIndex(where: { $0.role == "user" }) { t[i].content = text }
            return .conversation(t)
        }
    }
}

extension Steering {
    /// The interventions as the readout recipe records them (nil when there are none).
    public var records: [ReadoutRecipe.SteeringRecord]? {
        isEmpty ? nil : interventions.map {
            ReadoutRecipe.SteeringRecord(layer: $0.layer, strength: $0.strength, source: $0.source, vector: $0.vectorFingerprint)
        }
    }
}

/// The readout flags of `predict` (nil = not given).
public struct ReadoutFlags: Sendable {
    public var template: String?
    public var suffix: String?
    public var systemPrompt: String?
    public var maxTokens: Int?
    /// `--override-readout`: flags that contradict the recorded recipe win (with a warning).
    public var override = false
    public init(template: String? = nil, suffix: String? = nil, systemPrompt: String? = nil, maxTokens: Int? = nil, override: Bool = false) {
        self.template = template; self.suffix = suffix; self.systemPrompt = systemPrompt; self.maxTokens = maxTokens; self.override = override
    }
    var any: Bool { template != nil || suffix != nil || systemPrompt != nil || maxTokens != nil }

    /// The recipe the flags describe, on top of `base` (or the defaults).
    func applied(to base: ReadoutRecipe?, withEmbeddings: Bool, tokenizer: Tokenizer) throws -> ReadoutRecipe {
        var r = base ?? ReadoutRecipe(renderer: PromptRenderer(), maxTokens: 2048, withEmbeddings: withEmbeddings, tokenizer: tokenizer)
        if let t = template {
            guard let pt = PromptTemplate(rawValue: t) else { throw ExtractionError("--template '\(t)' is not one of auto|\(PromptTemplate.choices)") }
            if t != r.template { r.chat = nil }   // another template: the recorded one's record does not apply
            r.template = t
            if suffix == nil && base == nil { r.suffix = pt.defaultSuffix }
        }
        if let s = suffix { r.suffix = s }
        if let s = systemPrompt { r.systemPrompt = s }
        if let m = maxTokens { r.maxTokens = m }
        r.tokenizer = ReadoutRecipe.fingerprint(of: tokenizer)
        return r
    }
}

extension Predictor {
    /// The recipe predict uses for `probes` on a model with `tokenizer`, and warnings for stderr.
    /// Recorded recipe: used by default; a flag (or the model's tokenizer) that contradicts it is refused
    /// naming both values, unless `--override-readout` (then a warning). Imported activations (unknown
    /// readout): the flags are required. Probes of older versions (no recipe): the flags or defaults, with a warning.
    /// `chat`: the model's chat template, when known: `--template auto` on a model without one is llama2-chat.
    public static func readout(probes: ProbeSet, flags: ReadoutFlags, tokenizer: Tokenizer, chat: ModelChatInfo? = nil) throws -> (recipe: ReadoutRecipe, warnings: [String]) {
        var flags = flags
        if flags.template == PromptTemplate.auto.rawValue, let chat, chat.template == nil { flags.template = PromptTemplate.llama2Chat.rawValue }
        if let recorded = probes.readout {
            let wanted = try flags.applied(to: recorded, withEmbeddings: probes.withEmbeddings, tokenizer: tokenizer)
            let diffs = recorded.differences(wanted)
            guard !diffs.isEmpty else { return (recorded, []) }
            let list = diffs.map { d in
                d.field == "tokenizer" ? "the model's tokenizer \(d.theirs) differs from the recorded \(d.mine)"
                    : "\(d.field) \(d.theirs) contradicts the recorded \(d.mine)"
            }.joined(separator: "; ")
            guard flags.override else {
                throw ExtractionError("the probes in \(probes.directory) were trained on residuals read with another readout: \(list). "
                    + "Leave the flag out to use the recorded readout, or pass --override-readout to use yours")
            }
            return (wanted, ["warning: --override-readout: \(list); the probes' numbers assume the recorded readout"])
        }
        if let m = probes.model, ModelIdentity.isImported(m) {
            guard flags.template != nil else {
                throw ExtractionError("the probes in \(probes.directory) were trained on imported activations (unknown readout): "
                    + "pass the readout they were made with explicitly: --template auto|\(PromptTemplate.choices), and --suffix, --system-prompt and --max-tokens as used")
            }
            return (try flags.applied(to: nil, withEmbeddings: probes.withEmbeddings, tokenizer: tokenizer), [])
        }
        let r = try flags.applied(to: nil, withEmbeddings: probes.withEmbeddings, tokenizer: tokenizer)
        return (r, ["warning: the probes in \(probes.directory) record no readout recipe (written by an older llamaprobe, or .pth files without readout.json): "
            + "using \(flags.any ? "your flags" : "the defaults"): template \(r.template), suffix \(jsonString(r.suffix)), max tokens \(r.maxTokens)"])
    }

    /// Refuses probes trained on another checkpoint (both fingerprints named) unless `allowOther`; one line
    /// when only the quantization differs. Returns the lines for stderr.
    public static func checkModel(_ m: LoadedModel, probes: ProbeSet, allowOther: Bool) throws -> [String] {
        guard let trained = probes.model else { return [] }
        guard ModelIdentity.isFingerprint(trained) else {
            if ModelIdentity.isImported(trained) { return [] }
            return ["warning: the probes in \(probes.directory) record an older model identity (\(trained)), not a weights fingerprint: cannot check they were trained on \(m.path)"]
        }
        if trained == m.fingerprint {
            if let q = probes.quantization, q != m.quantization {
                return ["note: same checkpoint (\(trained)), only the quantization differs: the probes were trained on \(q) weights, \(m.path) is \(m.quantization)"]
            }
            return []
        }
        let what = "the probes in \(probes.directory) were trained on model \(trained), but \(m.path) is \(m.fingerprint) (\(ModelIdentity.differenceNote(trained, m.fingerprint)))"
        guard allowOther else {
            throw ExtractionError(what + "; their probabilities are only meaningful on that model. Pass --allow-other-model to use them anyway")
        }
        return ["warning: --allow-other-model: " + what]
    }
}
