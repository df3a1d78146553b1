import Foundation
import Formats

/// How a dataset row becomes the vector a probe reads: the prompt template, readout suffix and system prompt,
/// the token budget and how longer prompts are cut, the position read, whether the embedding output is a
/// layer, and the tokenizer (a fingerprint of its pieces). Recorded in every shard and manifest, copied by
/// `train` into probes.safetensors and readout.json; `predict` uses it by default. Extraction applies it
/// (`ReadoutRecipe.tokens` in the Extraction module); this is the plain record.
public struct ReadoutRecipe: Codable, Equatable, Sendable {
    /// Prompt template name: "llama2-chat", "raw", "auto" (the checkpoint's own chat template), "llama3", "chatml", "mistral".
    public var template: String
    /// Text appended after the template (the readout suffix).
    public var suffix: String
    /// System prompt (llama2-chat), nil for none.
    public var systemPrompt: String?
    /// Most tokens a prompt keeps (BOS included).
    public var maxTokens: Int
    /// How a longer prompt is cut: `Self.dropStartKeepBOS`.
    public var truncation: String
    /// The token(s) read: `Self.positions` ("last", "mean" over the message's own tokens, "suffix-mean" over
    /// the readout suffix's tokens; the rule is `ReadoutRecipe.span` in the Extraction module).
    public var position: String
    /// Hook points stored (shards: one tensor each, in this order) or read (probes: the one they were
    /// trained on), by TransformerLens name (`Self.hookNames`); nil (absent from the JSON) = resid_post only.
    public var hooks: [String]?
    /// Layer 0 is the embedding output (HF hidden_states indexing).
    public var withEmbeddings: Bool
    /// "sha256:<hex>" over the tokenizer's pieces and scores (padding pieces excluded).
    public var tokenizer: String
    /// Interventions applied while the rows were read (`--steer-…`); nil (absent from the JSON) when unsteered.
    public var steering: [SteeringRecord]?
    /// The chat template rendered (templates auto, llama3, chatml, mistral); nil (absent) for llama2-chat and raw.
    public var chat: ChatRecord?

    /// What a chat template's render depends on besides the messages: the template source and the date.
    public struct ChatRecord: Codable, Equatable, Sendable {
        /// "sha256:<hex>" of the template source (for auto: the checkpoint's own).
        public var template: String
        /// The `date_string` given to the template (`--date`); nil when none was.
        public var dateString: String?
        /// The day `strftime_now` formatted (YYYY-MM-DD), when the template reads the clock.
        public var today: String?
        enum CodingKeys: String, CodingKey { case template = "template_sha256", dateString = "date_string", today }
        public init(template: String, dateString: String?, today: String?) {
            self.template = template; self.dateString = dateString; self.today = today
        }
        var text: String { template + (dateString.map { ", date_string \($0)" } ?? "") + (today.map { ", today \($0)" } ?? "") }
    }

    /// One intervention: `strength · v/‖v‖` added to the output of block `layer` at every position.
    public struct SteeringRecord: Codable, Equatable, Sendable {
        public var layer: Int
        public var strength: Float
        /// Where v came from, as the user named it.
        public var source: String
        /// "sha256:<hex>" of v's f32 little-endian bytes.
        public var vector: String
        public init(layer: Int, strength: Float, source: String, vector: String) {
            self.layer = layer; self.strength = strength; self.source = source; self.vector = vector
        }
        var text: String { "block \(layer) += \(strength)·v/‖v‖ (v = \(source), \(vector))" }
    }

    /// BOS, then the last `maxTokens - 1` tokens: content is dropped from the start, the suffix survives.
    public static let dropStartKeepBOS = "drop-start-keep-bos"

    /// The positions a recipe may read.
    public static let positions = ["last", "mean", "suffix-mean"]
    /// The block hook points by TransformerLens name, in the order the forward pass reaches them (Model's
    /// `Hook` has exactly these raw values; a test holds them equal).
    public static let hookNames = ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"]
    public static let defaultHook = "resid_post"

    /// The hook points stored or read: `hooks`, or resid_post when nil.
    public var hookList: [String] { hooks ?? [Self.defaultHook] }

    /// The recipe of probes trained on `hook` of shards with this recipe (`hooks` names that one only).
    public func reading(hook: String) -> ReadoutRecipe {
        var r = self
        r.hooks = hook == Self.defaultHook ? nil : [hook]
        return r
    }

    enum CodingKeys: String, CodingKey {
        case template, suffix, truncation, position, tokenizer, steering, hooks, chat
        case systemPrompt = "system_prompt", maxTokens = "max_tokens", withEmbeddings = "with_embeddings"
    }

    public init(template: String, suffix: String, systemPrompt: String?, maxTokens: Int, withEmbeddings: Bool,
                tokenizer: String, truncation: String = ReadoutRecipe.dropStartKeepBOS, position: String = "last") {
        self.template = template; self.suffix = suffix; self.systemPrompt = systemPrompt; self.maxTokens = maxTokens
        self.withEmbeddings = withEmbeddings; self.tokenizer = tokenizer; self.truncation = truncation; self.position = position
    }

    /// Deterministic one-line JSON (sorted keys).
    public var json: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? e.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// Parses and validates a recorded recipe, naming `file` and the field.
    public static func parse(_ json: String, file: String) throws -> ReadoutRecipe {
        let r: ReadoutRecipe
        do { r = try JSONDecoder().decode(ReadoutRecipe.self, from: Data(json.utf8)) } catch {
            throw ShardError(file: file, reason: "'readout' is not a readout recipe (JSON with template, suffix, max_tokens, …): \(error.localizedDescription)")
        }
        try r.validate(file: file)
        return r
    }

    public func validate(file: String) throws {
        func fail(_ r: String) -> ShardError { ShardError(file: file, reason: "readout recipe: " + r) }
        guard (2...(1 << 30)).contains(maxTokens) else { throw fail("'max_tokens' \(maxTokens) is not in 2...\(1 << 30)") }
        guard truncation == Self.dropStartKeepBOS else { throw fail("'truncation' '\(truncation)' is not '\(Self.dropStartKeepBOS)'") }
        guard Self.positions.contains(position) else {
            throw fail("'position' '\(position)' is not one of \(Self.positions.joined(separator: ", "))")
        }
        if let h = hooks {
            guard !h.isEmpty else { throw fail("'hooks' is empty (leave it out for resid_post)") }
            if let bad = h.first(where: { !Self.hookNames.contains($0) }) {
                throw fail("'hooks': '\(bad)' is not a hook point (\(Self.hookNames.joined(separator: ", ")))")
            }
            guard Set(h).count == h.count else { throw fail("'hooks' lists a hook twice") }
            guard !withEmbeddings || h == [Self.defaultHook] else {
                throw fail("'with_embeddings' (the embedding output as layer 0) needs 'hooks' resid_post alone, not \(h.joined(separator: ","))")
            }
        }
        for s in steering ?? [] {
            guard (0..<(1 << 20)).contains(s.layer) else { throw fail("'steering': layer \(s.layer) is not a block number") }
            guard s.strength.isFinite else { throw fail("'steering': strength \(s.strength) is not finite") }
        }
    }

    /// The fields in which `other` differs, as (flag, this value, other value), values as a user would type them.
    public func differences(_ other: ReadoutRecipe) -> [(field: String, mine: String, theirs: String)] {
        var d: [(String, String, String)] = []
        func q(_ s: String?) -> String { s.map(jsonString) ?? "none" }
        if template != other.template { d.append(("--template", template, other.template)) }
        if suffix != other.suffix { d.append(("--suffix", q(suffix), q(other.suffix))) }
        if systemPrompt != other.systemPrompt { d.append(("--system-prompt", q(systemPrompt), q(other.systemPrompt))) }
        if maxTokens != other.maxTokens { d.append(("--max-tokens", String(maxTokens), String(other.maxTokens))) }
        if truncation != other.truncation { d.append(("truncation", truncation, other.truncation)) }
        if position != other.position { d.append(("--position", position, other.position)) }
        if hookList != other.hookList { d.append(("--hooks", hookList.joined(separator: ","), other.hookList.joined(separator: ","))) }
        if withEmbeddings != other.withEmbeddings { d.append(("--with-embeddings", String(withEmbeddings), String(other.withEmbeddings))) }
        if tokenizer != other.tokenizer { d.append(("tokenizer", tokenizer, other.tokenizer)) }
        if chat != other.chat { d.append(("chat template", chat?.text ?? "none", other.chat?.text ?? "none")) }
        if steering != other.steering {
            func s(_ r: [SteeringRecord]?) -> String { r.map { $0.map(\.text).joined(separator: "; ") } ?? "none" }
            d.append(("--steer-…", s(steering), s(other.steering)))
        }
        return d
    }

    /// `readout.json` beside the .pth files: the recipe and the model the probes were trained on.
    public struct File: Codable, Equatable, Sendable {
        public var format = "llamaprobe-readout"
        public var readout: ReadoutRecipe?
        /// Model fingerprint (`weights-v2:…`), "imported:…", or an older identity.
        public var model: String
        public var quantization: String?
        public static let name = "readout.json"

        public init(readout: ReadoutRecipe?, model: String, quantization: String?) {
            self.readout = readout; self.model = model; self.quantization = quantization
        }

        public static func read(directory: String) throws -> File? {
            let path = directory + "/" + name
            guard FileManager.default.fileExists(atPath: path) else { return nil }
            let data: Data
            do { data = try Files.readData(path, limit: 16 << 20) } catch {
                throw ShardError(file: path, reason: "cannot read: \((error as? FileError)?.reason ?? error.localizedDescription)")
            }
            let f: File
            do { f = try JSONDecoder().decode(File.self, from: data) } catch {
                throw ShardError(file: path, reason: "not a readout file: \(error.localizedDescription)")
            }
            guard f.format == "llamaprobe-readout" else { throw ShardError(file: path, reason: "'format' is '\(f.format)', not llamaprobe-readout") }
            try f.readout?.validate(file: path)
            return f
        }

        public var text: String {
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            return String(decoding: (try? e.encode(self)) ?? Data(), as: UTF8.self) + "\n"
        }
    }
}
