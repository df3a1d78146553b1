import Foundation
import Formats

/// Byte-level BPE from a Hugging Face `tokenizer.json`, encoding exactly as the `tokenizers` library does
/// (checked against it on the hard corpus of Tests/fixtures/bpe) for the configurations of Llama-3 and Qwen2:
///
/// 1. added tokens whose `normalized` is false are split out of the raw text (leftmost-longest, honouring
///    `lstrip`, `rstrip`, `single_word`), as `AddedVocabulary::find_matches` does;
/// 2. each remaining piece is normalized (none or NFC) and the `normalized` added tokens are split out of it;
/// 3. the pre-tokenizer `Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)]` cuts the rest into words
///    with Llama-3's or Qwen2's regex (matched by hand, see `PreTokenizerPattern`) and maps bytes to characters;
/// 4. each word is one token when `ignore_merges` is set and the vocabulary has it, else its bytes are merged
///    by rank exactly as `Word::merge_all` does (a heap of (rank, position), stale entries skipped);
/// 5. the post-processor (`TemplateProcessing`, `ByteLevel`, or a `Sequence` of them) adds its special tokens
///    when asked to (`add_special_tokens`).
///
/// Every field read from the file is validated; errors name the file and the field.
public struct BPETokenizer: Sendable {
    /// The split regexes this implementation knows, written out as matchers (ICU's `\s` is not Oniguruma's).
    public enum PreTokenizerPattern: String, Sendable {
        /// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
        case llama3
        /// Qwen2: the same with single digits (`\p{N}`).
        case qwen2

        static let regexes: [String: PreTokenizerPattern] = [
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#: .llama3,
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#: .qwen2,
        ]
        /// The regex as tokenizer.json spells it.
        public var regex: String { Self.regexes.first { $0.value == self }!.key }
        var maxDigits: Int { self == .llama3 ? 3 : 1 }
    }

    public struct AddedToken: Sendable, Equatable {
        public let id: Int32
        public let content: String
        public let special: Bool
        public let lstrip: Bool
        public let rstrip: Bool
        public let singleWord: Bool
        public let normalized: Bool
    }

    public let source: String
    /// Token string of each id (byte-level characters for the model's vocabulary, the content for added tokens).
    public let tokens: [String]
    public let addedTokens: [AddedToken]
    /// The merges in rank order, as pairs of ids (what GGUF's `tokenizer.ggml.merges` lists as strings).
    public let mergeList: [(Int32, Int32)]
    public let ignoreMerges: Bool
    public let nfc: Bool
    public let pattern: PreTokenizerPattern
    public let addPrefixSpace: Bool
    public let unkID: Int32?
    /// Ids the post-processor puts before and after the text (`add_special_tokens=True`).
    public let prefixIDs: [Int32]
    public let suffixIDs: [Int32]

    /// Model vocabulary: UTF-8 bytes of the token string -> id (bytes, not String: Swift's String equality is
    /// canonical equivalence, Rust's is byte equality).
    private let vocab: [[UInt8]: Int32]
    /// (left id << 32 | right id) -> (rank, merged id).
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    /// Id of each byte's character, nil when the vocabulary lacks it.
    private let byteIDs: [Int32?]
    private let fuseUnk: Bool
    private let byteFallback: Bool
    private let byteFallbackIDs: [Int32?]
    /// Added tokens matched on the raw text / on normalized text, as scalars with their index in `addedTokens`.
    private let rawPatterns: AddedMatcher
    private let normalizedPatterns: AddedMatcher
    private let decodes: Bool

    public var vocabSize: Int { tokens.count }

    /// The id of a token string (an added token's content or a vocabulary entry).
    public func id(of token: String) -> Int32? {
        addedTokens.first { $0.content.utf8.elementsEqual(token.utf8) }?.id ?? vocab[Array(token.utf8)]
    }

    // MARK: Byte-level characters (GPT-2's bytes_to_unicode)

    /// The character standing for each byte: printable Latin-1 bytes are themselves, the others 256 + n in order.
    public static let byteChars: [Unicode.Scalar] = {
        var chars = [Unicode.Scalar](repeating: " ", count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            if (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b) {
                chars[b] = Unicode.Scalar(UInt32(b))!
            } else {
                chars[b] = Unicode.Scalar(256 + n)!
                n += 1
            }
        }
        return chars
    }()
    static let byteCharUTF8: [[UInt8]] = byteChars.map { Array(String($0).utf8) }
    static let charBytes: [UInt32: UInt8] = Dictionary(uniqueKeysWithValues: byteChars.enumerated().map { ($1.value, UInt8($0)) })

    /// The bytes a byte-level token string stands for; nil when a character is not a byte character.
    public static func bytes(ofByteLevel token: String) -> [UInt8]? {
        var out: [UInt8] = []
        for s in token.unicodeScalars {
            guard let b = charBytes[s.value] else { return nil }
            out.append(b)
        }
        return out
    }

    /// The byte-level token string of `bytes`.
    public static func byteLevel(_ bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(byteChars[Int(b)]) }
        return String(s)
    }

    // MARK: Loading

    public init(path: String) throws {
        try self.init(json: try Files.readData(path, limit: 256 << 20), source: path)
    }

    public init(json data: Data, source: String) throws {
        func fail(_ field: String, _ reason: String) -> TokenizerError {
            TokenizerError(source: source, reason: "\(field): \(reason)")
        }
        let root: [String: Any]
        do {
            guard let r = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw fail("tokenizer.json", "is not a JSON object")
            }
            root = r
        } catch let e as TokenizerError { throw e } catch {
            throw TokenizerError(source: source, reason: "is not valid JSON (a Hugging Face tokenizer.json): \(error.localizedDescription)")
        }
        let j = JSONFields(fail: fail)

        // Model.
        let model = try j.object(root["model"], "model")
        let type = try j.optionalString(model["type"], "model.type") ?? "BPE"
        guard type == "BPE" else { throw fail("model.type", "'\(type)' is not supported (only byte-level 'BPE')") }
        if let d = model["dropout"], !(d is NSNull) {
            let v = try j.number(d, "model.dropout")
            guard v == 0 else { throw fail("model.dropout", "\(v): BPE dropout makes encoding random; not supported") }
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = try j.optionalString(model[key], "model.\(key)"), !s.isEmpty {
                throw fail("model.\(key)", "'\(s)' is not supported (byte-level BPE has none)")
            }
        }
        let ignoreMerges = try j.bool(model["ignore_merges"], "model.ignore_merges", default: false)
        let fuseUnk = try j.bool(model["fuse_unk"], "model.fuse_unk", default: false)
        let byteFallback = try j.bool(model["byte_fallback"], "model.byte_fallback", default: false)
        let vocabObject = try j.object(model["vocab"], "model.vocab")
        guard !vocabObject.isEmpty else { throw fail("model.vocab", "is empty") }

        // Ids must be dense: 0..<n over the vocabulary and the added tokens together.
        var vocab: [[UInt8]: Int32] = [:]
        vocab.reserveCapacity(vocabObject.count)
        var byID: [Int32: String] = [:]
        byID.reserveCapacity(vocabObject.count)
        for (token, value) in vocabObject {
            let id = try j.id(value, "model.vocab['\(token)']")
            if let other = byID[id] {
                throw fail("model.vocab", "id \(id) is given to both '\(other)' and '\(token)'")
            }
            byID[id] = token
            vocab[Array(token.utf8)] = id
        }

        // Added tokens.
        var added: [AddedToken] = []
        let addedArray = try j.array(root["added_tokens"] ?? [Any](), "added_tokens")
        for (i, entry) in addedArray.enumerated() {
            let field = "added_tokens[\(i)]"
            let o = try j.object(entry, field)
            let content = try j.string(o["content"], field + ".content")
            guard !content.isEmpty else { throw fail(field + ".content", "is empty") }
            let id = try j.id(o["id"], field + ".id")
            let t = AddedToken(id: id, content: content, special: try j.bool(o["special"], field + ".special", default: false),
                               lstrip: try j.bool(o["lstrip"], field + ".lstrip", default: false),
                               rstrip: try j.bool(o["rstrip"], field + ".rstrip", default: false),
                               singleWord: try j.bool(o["single_word"], field + ".single_word", default: false),
                               normalized: try j.bool(o["normalized"], field + ".normalized", default: true))
            if let v = vocab[Array(content.utf8)], v != id {
                throw fail(field + ".id", "is \(id) but model.vocab gives '\(content)' the id \(v)")
            }
            if let other = byID[id], !other.utf8.elementsEqual(content.utf8) {
                throw fail(field + ".id", "\(id) is already the id of '\(other)'")
            }
            if added.contains(where: { $0.content.utf8.elementsEqual(content.utf8) && $0.id != id }) {
                throw fail(field + ".content", "'\(content)' is listed twice with different ids")
            }
            byID[id] = content
            added.append(t)
        }
        let count = byID.count
        guard count <= Int(Int32.max) else { throw fail("model.vocab", "has too many tokens") }
        var tokens = [String](repeating: "", count: count)
        for (id, token) in byID {
            guard Int(id) < count else {
                throw fail("model.vocab", "ids are not contiguous: \(id) ('\(token)') is beyond the \(count) tokens (an id below it is unused)")
            }
            tokens[Int(id)] = token
        }

        // Merges: "a b" strings (the older format) or [a, b] pairs.
        let mergesArray = try j.array(model["merges"] ?? [Any](), "model.merges")
        var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
        merges.reserveCapacity(mergesArray.count)
        var mergeList: [(Int32, Int32)] = []
        mergeList.reserveCapacity(mergesArray.count)
        guard mergesArray.count < Int(Int32.max) else { throw fail("model.merges", "has too many merges") }
        for (rank, m) in mergesArray.enumerated() {
            let field = "model.merges[\(rank)]"
            let parts: [String]
            if let s = m as? String {
                parts = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2 else { throw fail(field, "'\(s)' is not two tokens separated by one space") }
            } else if let a = m as? [Any] {
                guard a.count == 2, let l = a[0] as? String, let r = a[1] as? String else {
                    throw fail(field, "is not a pair of two token strings")
                }
                parts = [l, r]
            } else {
                throw fail(field, "is neither a string \"a b\" nor a pair [a, b]")
            }
            guard let l = vocab[Array(parts[0].utf8)] else { throw fail(field, "'\(parts[0])' is not in model.vocab") }
            guard let r = vocab[Array(parts[1].utf8)] else { throw fail(field, "'\(parts[1])' is not in model.vocab") }
            guard let merged = vocab[Array((parts[0] + parts[1]).utf8)] else {
                throw fail(field, "the merged token '\(parts[0] + parts[1])' is not in model.vocab")
            }
            merges[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))] = (Int32(rank), merged)   // a repeated pair: the later rank, as HF
            mergeList.append((l, r))
        }

        var unkID: Int32? = nil
        if let u = try j.optionalString(model["unk_token"], "model.unk_token") {
            guard let id = vocab[Array(u.utf8)] else { throw fail("model.unk_token", "'\(u)' is not in model.vocab") }
            unkID = id
        }

        // Normalizer: none or NFC (alone or in a Sequence).
        var nfc = false
        if let n = root["normalizer"], !(n is NSNull) {
            let o = try j.object(n, "normalizer")
            let t = try j.string(o["type"], "normalizer.type")
            switch t {
            case "NFC": nfc = true
            case "Sequence":
                let list = try j.array(o["normalizers"], "normalizer.normalizers")
                for (i, e) in list.enumerated() {
                    let et = try j.string(try j.object(e, "normalizer.normalizers[\(i)]")["type"], "normalizer.normalizers[\(i)].type")
                    guard et == "NFC" else {
                        throw fail("normalizer.normalizers[\(i)].type", "'\(et)' is not supported (only NFC or no normalizer)")
                    }
                    nfc = true
                }
            default: throw fail("normalizer.type", "'\(t)' is not supported (only NFC or no normalizer)")
            }
        }

        // Pre-tokenizer: Sequence[Split(known regex, Isolated, invert false), ByteLevel(use_regex false)].
        let pre = try j.object(root["pre_tokenizer"], "pre_tokenizer")
        let expected = "Sequence[Split(Llama-3's or Qwen2's regex, Isolated), ByteLevel(use_regex=false)]"
        guard try j.string(pre["type"], "pre_tokenizer.type") == "Sequence" else {
            throw fail("pre_tokenizer.type", "'\(pre["type"] ?? "")' is not supported (expected \(expected))")
        }
        let steps = try j.array(pre["pretokenizers"], "pre_tokenizer.pretokenizers")
        guard steps.count == 2 else {
            throw fail("pre_tokenizer.pretokenizers", "has \(steps.count) steps (expected \(expected))")
        }
        let split = try j.object(steps[0], "pre_tokenizer.pretokenizers[0]")
        guard try j.string(split["type"], "pre_tokenizer.pretokenizers[0].type") == "Split" else {
            throw fail("pre_tokenizer.pretokenizers[0].type", "is not 'Split' (expected \(expected))")
        }
        let patternObject = try j.object(split["pattern"], "pre_tokenizer.pretokenizers[0].pattern")
        let regex = try j.string(patternObject["Regex"], "pre_tokenizer.pretokenizers[0].pattern.Regex")
        guard let p = PreTokenizerPattern.regexes[regex] else {
            throw fail("pre_tokenizer.pretokenizers[0].pattern.Regex", "'\(regex)' is not one this implementation knows (Llama-3's or Qwen2's)")
        }
        let behavior = try j.string(split["behavior"], "pre_tokenizer.pretokenizers[0].behavior")
        guard behavior == "Isolated" else { throw fail("pre_tokenizer.pretokenizers[0].behavior", "'\(behavior)' is not supported (only 'Isolated')") }
        guard try !j.bool(split["invert"], "pre_tokenizer.pretokenizers[0].invert", default: false) else {
            throw fail("pre_tokenizer.pretokenizers[0].invert", "true is not supported")
        }
        let bl = try j.object(steps[1], "pre_tokenizer.pretokenizers[1]")
        guard try j.string(bl["type"], "pre_tokenizer.pretokenizers[1].type") == "ByteLevel" else {
            throw fail("pre_tokenizer.pretokenizers[1].type", "is not 'ByteLevel' (expected \(expected))")
        }
        guard try !j.bool(bl["use_regex"], "pre_tokenizer.pretokenizers[1].use_regex", default: true) else {
            throw fail("pre_tokenizer.pretokenizers[1].use_regex", "true (GPT-2's own split after the Split) is not supported")
        }
        let addPrefixSpace = try j.bool(bl["add_prefix_space"], "pre_tokenizer.pretokenizers[1].add_prefix_space", default: true)

        // Post-processor: none, ByteLevel (ids unchanged), TemplateProcessing, or a Sequence of them.
        var prefix: [Int32] = [], suffix: [Int32] = []
        func postProcessor(_ value: Any, _ field: String, depth: Int) throws {
            let o = try j.object(value, field)
            let t = try j.string(o["type"], field + ".type")
            switch t {
            case "ByteLevel": break
            case "Sequence":
                guard depth < 4 else { throw fail(field, "Sequence nested too deeply") }
                for (i, e) in try j.array(o["processors"], field + ".processors").enumerated() {
                    try postProcessor(e, field + ".processors[\(i)]", depth: depth + 1)
                }
            case "TemplateProcessing":
                guard prefix.isEmpty && suffix.isEmpty else { throw fail(field, "a second TemplateProcessing is not supported") }
                let specials = try j.object(o["special_tokens"] ?? [String: Any](), field + ".special_tokens")
                var seenSequence = false
                for (i, item) in try j.array(o["single"], field + ".single").enumerated() {
                    let f = field + ".single[\(i)]"
                    let io = try j.object(item, f)
                    if let s = io["SpecialToken"] {
                        let name = try j.string(try j.object(s, f + ".SpecialToken")["id"], f + ".SpecialToken.id")
                        guard let st = specials[name] else { throw fail(f + ".SpecialToken.id", "'\(name)' is not in \(field).special_tokens") }
                        let ids = try j.array(try j.object(st, field + ".special_tokens['\(name)']")["ids"], field + ".special_tokens['\(name)'].ids")
                        for (k, v) in ids.enumerated() {
                            let id = try j.id(v, field + ".special_tokens['\(name)'].ids[\(k)]")
                            guard Int(id) < count else {
                                throw fail(field + ".special_tokens['\(name)'].ids[\(k)]", "\(id) is outside the vocabulary of \(count) tokens")
                            }
                            if seenSequence { suffix.append(id) } else { prefix.append(id) }
                        }
                    } else if let s = io["Sequence"] {
                        let name = try j.string(try j.object(s, f + ".Sequence")["id"], f + ".Sequence.id")
                        guard name == "A", !seenSequence else { throw fail(f + ".Sequence.id", "'\(name)': a single-sequence template must hold $A once") }
                        seenSequence = true
                    } else {
                        throw fail(f, "is neither a SpecialToken nor a Sequence")
                    }
                }
                guard seenSequence else { throw fail(field + ".single", "has no $A (the text)") }
            default:
                throw fail(field + ".type", "'\(t)' is not supported (ByteLevel, TemplateProcessing or a Sequence of them)")
            }
        }
        if let pp = root["post_processor"], !(pp is NSNull) { try postProcessor(pp, "post_processor", depth: 0) }

        // Decoder: ByteLevel (or none: tokens joined with spaces, as HF).
        var decodes = false
        if let d = root["decoder"], !(d is NSNull) {
            let t = try j.string(try j.object(d, "decoder")["type"], "decoder.type")
            guard t == "ByteLevel" else { throw fail("decoder.type", "'\(t)' is not supported (only ByteLevel)") }
            decodes = true
        }
        self.init(source: source, tokens: tokens, vocab: vocab, addedTokens: added, mergeList: mergeList, merges: merges,
                  ignoreMerges: ignoreMerges, fuseUnk: fuseUnk, byteFallback: byteFallback, unkID: unkID, nfc: nfc,
                  pattern: p, addPrefixSpace: addPrefixSpace, prefixIDs: prefix, suffixIDs: suffix, decodes: decodes)
    }

    /// A tokenizer from its parts, validated by the caller (ids in range, merges' tokens in the vocabulary).
    init(source: String, tokens: [String], vocab: [[UInt8]: Int32], addedTokens added: [AddedToken], mergeList: [(Int32, Int32)],
         merges: [UInt64: (rank: Int32, id: Int32)], ignoreMerges: Bool, fuseUnk: Bool, byteFallback: Bool, unkID: Int32?,
         nfc: Bool, pattern: PreTokenizerPattern, addPrefixSpace: Bool, prefixIDs: [Int32], suffixIDs: [Int32], decodes: Bool) {
        self.source = source
        self.tokens = tokens
        self.vocab = vocab
        self.addedTokens = added
        self.mergeList = mergeList
        self.merges = merges
        self.ignoreMerges = ignoreMerges
        self.fuseUnk = fuseUnk
        self.byteFallback = byteFallback
        self.unkID = unkID
        self.nfc = nfc
        self.pattern = pattern
        self.addPrefixSpace = addPrefixSpace
        self.prefixIDs = prefixIDs
        self.suffixIDs = suffixIDs
        self.decodes = decodes
        byteIDs = Self.byteCharUTF8.map { vocab[$0] }
        byteFallbackIDs = (0..<256).map { vocab[Array(String(format: "<0x%02X>", $0).utf8)] }

        // The added-token matchers: the non-normalized ones on the raw text, the others on normalized text
        // (their content normalized), special tokens first as HF orders them.
        var raw: [(scalars: [Unicode.Scalar], index: Int)] = [], norm: [(scalars: [Unicode.Scalar], index: Int)] = []
        let order = added.indices.filter { added[$0].special } + added.indices.filter { !added[$0].special }
        var seen = Set<[UInt8]>()   // bytes: String equality is canonical equivalence
        for i in order where seen.insert(Array(added[i].content.utf8)).inserted {
            if added[i].normalized {
                let c = nfc ? added[i].content.precomposedStringWithCanonicalMapping : added[i].content
                if !c.isEmpty { norm.append((Array(c.unicodeScalars), i)) }
            } else {
                raw.append((Array(added[i].content.unicodeScalars), i))
            }
        }
        rawPatterns = AddedMatcher(raw)
        normalizedPatterns = AddedMatcher(norm)
    }

    // MARK: Encoding

    /// Ids as HF's `tokenizer.encode(text, add_special_tokens: addSpecial).ids`.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int32] {
        var ids: [Int32] = addSpecialTokens ? prefixIDs : []
        let scalars = Array(text.unicodeScalars)
        for (token, range) in findMatches(scalars[...], rawPatterns) where !range.isEmpty {
            if let t = token { ids.append(addedTokens[t].id); continue }
            var piece = Array(scalars[range])
            if nfc {
                var s = String.UnicodeScalarView()
                s.append(contentsOf: piece)
                piece = Array(String(s).precomposedStringWithCanonicalMapping.unicodeScalars)
            }
            for (t2, r2) in findMatches(piece[...], normalizedPatterns) where !r2.isEmpty {
                if let t = t2 { ids.append(addedTokens[t].id) } else { encodeNormalized(piece[r2], into: &ids) }
            }
        }
        if addSpecialTokens { ids += suffixIDs }
        return ids
    }

    /// The model alone on `text` (no added-token splitting, no post-processor): normalizer, pre-tokenizer, BPE.
    public func encodePlain(_ text: String) -> [Int32] {
        var s = text
        if nfc { s = s.precomposedStringWithCanonicalMapping }
        var ids: [Int32] = []
        encodeNormalized(Array(s.unicodeScalars)[...], into: &ids)
        return ids
    }

    private func encodeNormalized(_ piece: ArraySlice<Unicode.Scalar>, into ids: inout [Int32]) {
        for word in Self.split(piece, pattern) {
            var bytes: [UInt8] = []
            if addPrefixSpace && word.first != " " { bytes.append(0x20) }
            for s in word { UTF8.encode(s) { bytes.append($0) } }
            bpe(bytes, into: &ids)
        }
    }

    /// `AddedVocabulary::find_matches`: leftmost-longest matches of `patterns` (non-overlapping, scanning on
    /// from each match's end), `single_word` matches between word characters dropped, `lstrip` / `rstrip`
    /// widening a match over the whitespace beside it. Returns (index into addedTokens or nil, range) covering
    /// the text (ranges are indices of `s`).
    private func findMatches(_ s: ArraySlice<Unicode.Scalar>, _ matcher: AddedMatcher) -> [(Int?, Range<Int>)] {
        let base = s.startIndex, end = s.endIndex
        guard !matcher.patterns.isEmpty, !s.isEmpty else { return [(nil, base..<end)] }
        var out: [(Int?, Range<Int>)] = []
        var startOffset = base
        var i = base
        while i < end {
            var best: (len: Int, index: Int)? = nil
            for k in matcher.byFirst[s[i].value] ?? [] {
                let p = matcher.patterns[k]
                guard p.scalars.count > (best?.len ?? 0) && p.scalars.count <= end - i else { continue }
                if s[i..<(i + p.scalars.count)].elementsEqual(p.scalars) { best = (p.scalars.count, p.index) }
            }
            guard let (len, index) = best else { i += 1; continue }
            var start = i, stop = i + len
            i = stop
            let t = addedTokens[index]
            if t.singleWord {
                let startOK = start == base || !Self.isWordCharacter(s[start - 1])
                let stopOK = stop == end || !Self.isWordCharacter(s[stop])
                if !startOK || !stopOK { continue }
            }
            if t.lstrip {
                var k = start
                while k > base && s[k - 1].properties.isWhitespace { k -= 1 }
                start = max(k, startOffset)
            }
            if t.rstrip {
                while stop < end && s[stop].properties.isWhitespace { stop += 1 }
            }
            if startOffset < start { out.append((nil, startOffset..<start)) }
            out.append((index, start..<stop))
            startOffset = stop
        }
        if startOffset != end { out.append((nil, startOffset..<end)) }
        return out
    }

    /// Rust regex's Unicode `\w`: Alphabetic, marks, decimal digits, connector punctuation, join controls.
    static func isWordCharacter(_ c: Unicode.Scalar) -> Bool {
        let p = c.properties
        if p.isAlphabetic || p.isJoinControl { return true }
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    // MARK: Pre-tokenizer

    static func isLetter(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }
    static func isNumber(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
    /// Oniguruma's Unicode `\s` (the White_Space property).
    static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }
    static func isCRLF(_ c: Unicode.Scalar) -> Bool { c == "\r" || c == "\n" }

    /// The words `Split(pattern, Isolated)` cuts `s` into: the regex's matches in order (every character is
    /// matched by one of the alternatives, so there are no gaps). Alternatives are tried in order at each
    /// position as a backtracking engine does; where a greedy quantifier would backtrack, the result is
    /// computed directly (see the comments).
    static func split(_ s: ArraySlice<Unicode.Scalar>, _ pattern: PreTokenizerPattern) -> [ArraySlice<Unicode.Scalar>] {
        var words: [ArraySlice<Unicode.Scalar>] = []
        var i = s.startIndex
        let end = s.endIndex
        while i < end {
            let n = matchLength(s, at: i, maxDigits: pattern.maxDigits)
            words.append(s[i..<(i + n)])
            i += n
        }
        return words
    }

    /// The words of `text` (no normalization): what `Split(pattern, Isolated)` gives.
    public static func words(_ text: String, _ pattern: PreTokenizerPattern) -> [String] {
        split(Array(text.unicodeScalars)[...], pattern).map { String(String.UnicodeScalarView($0)) }
    }

    /// Length (≥ 1) of the match at `i`.
    static func matchLength(_ s: ArraySlice<Unicode.Scalar>, at i: Int, maxDigits: Int) -> Int {
        let end = s.endIndex
        let c = s[i]
        // (?i:'s|'t|'re|'ve|'m|'ll|'d) — case-insensitive with Unicode folding: ſ (U+017F) folds to s.
        if c == "'" && i + 1 < end {
            func folds(_ x: Unicode.Scalar, _ lower: Unicode.Scalar) -> Bool {
                x == lower || x.value == lower.value - 32 || (lower == "s" && x == "\u{17F}")
            }
            let a = s[i + 1]
            let b: Unicode.Scalar? = i + 2 < end ? s[i + 2] : nil
            if folds(a, "s") || folds(a, "t") || folds(a, "m") || folds(a, "d") { return 2 }
            if let b {
                if (folds(a, "r") || folds(a, "v")) && folds(b, "e") { return 3 }
                if folds(a, "l") && folds(b, "l") { return 3 }
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        do {
            var j = i
            if !isLetter(c) && !isCRLF(c) && !isNumber(c) && i + 1 < end && isLetter(s[i + 1]) { j = i + 1 }
            if isLetter(s[j]) {
                while j < end && isLetter(s[j]) { j += 1 }
                return j - i
            }
        }
        // \p{N}{1,maxDigits}
        if isNumber(c) {
            var j = i
            while j < end && j - i < maxDigits && isNumber(s[j]) { j += 1 }
            return j - i
        }
        // ␠?[^\s\p{L}\p{N}]+[\r\n]*  (without the space the class cannot match a space: no backtracking)
        do {
            var j = i
            if c == " " { j += 1 }
            let k0 = j
            while j < end && !isSpace(s[j]) && !isLetter(s[j]) && !isNumber(s[j]) { j += 1 }
            if j > k0 {
                while j < end && isCRLF(s[j]) { j += 1 }
                return j - i
            }
        }
        // From here c is whitespace (every other character matched above).
        var k = i
        while k < end && isSpace(s[k]) { k += 1 }
        // \s*[\r\n]+ — \s* backtracks to the last \r or \n of the whitespace run, [\r\n]+ takes it.
        if let last = (i..<k).last(where: { isCRLF(s[$0]) }) { return last + 1 - i }
        // \s+(?!\S) — the whole run at the end of the text, else the run less its last character.
        if k == end { return k - i }
        if k - i >= 2 { return k - 1 - i }
        // \s+
        return max(k - i, 1)
    }

    // MARK: BPE

    /// One word (the UTF-8 bytes of a pre-token) to ids: `BPE::tokenize_with_cache` / `Word::merge_all`.
    private func bpe(_ bytes: [UInt8], into ids: inout [Int32]) {
        guard !bytes.isEmpty else { return }
        if ignoreMerges {
            var key: [UInt8] = []
            key.reserveCapacity(bytes.count * 2)
            for b in bytes { key += Self.byteCharUTF8[Int(b)] }
            if let id = vocab[key] { ids.append(id); return }
        }
        // Symbols: one per character of the byte-level word (= one per byte); unknown ones as HF's merge_word.
        var ch: [Int32] = []
        ch.reserveCapacity(bytes.count)
        var pendingUnk = false
        for b in bytes {
            if let id = byteIDs[Int(b)] { ch.append(id); pendingUnk = false; continue }
            if byteFallback, let id = byteFallbackIDs[Int(b)] { ch.append(id); pendingUnk = false; continue }
            guard let u = unkID else { continue }   // no unk token: the character is dropped, as HF does
            if fuseUnk && pendingUnk { continue }
            ch.append(u)
            pendingUnk = true
        }
        let n = ch.count
        guard n > 1 else { ids += ch; return }
        var prev = (0..<n).map { $0 - 1 }
        var next = (0..<n).map { $0 + 1 == n ? -1 : $0 + 1 }
        var alive = [Bool](repeating: true, count: n)
        var heap = MergeHeap()
        func merge(_ a: Int32, _ b: Int32) -> (rank: Int32, id: Int32)? { merges[UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))] }
        for p in 0..<(n - 1) { if let m = merge(ch[p], ch[p + 1]) { heap.push(.init(rank: m.rank, pos: p, id: m.id)) } }
        while let top = heap.pop() {
            let p = top.pos
            guard alive[p], next[p] >= 0 else { continue }
            let r = next[p]
            guard let m = merge(ch[p], ch[r]), m.id == top.id else { continue }   // a stale entry
            ch[p] = top.id
            alive[r] = false
            next[p] = next[r]
            if next[r] >= 0 { prev[next[r]] = p }
            if prev[p] >= 0, let m2 = merge(ch[prev[p]], ch[p]) { heap.push(.init(rank: m2.rank, pos: prev[p], id: m2.id)) }
            if next[p] >= 0, let m2 = merge(ch[p], ch[next[p]]) { heap.push(.init(rank: m2.rank, pos: p, id: m2.id)) }
        }
        for p in 0..<n where alive[p] { ids.append(ch[p]) }
    }

    // MARK: Decoding

    /// The bytes a token stands for: byte-level characters decoded; added tokens (and any token with a
    /// character outside the byte map) as their UTF-8 text, as HF's ByteLevel decoder.
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard id >= 0 && Int(id) < tokens.count else { return [] }
        let t = tokens[Int(id)]
        return Self.bytes(ofByteLevel: t) ?? Array(t.utf8)
    }

    /// HF's `decode(ids, skip_special_tokens=False)`.
    public func decode(_ ids: [Int32]) -> String {
        let valid = ids.filter { $0 >= 0 && Int($0) < tokens.count }
        guard decodes else { return valid.map { tokens[Int($0)] }.joined(separator: " ") }
        return String(decoding: valid.flatMap { tokenBytes($0) }, as: UTF8.self)
    }
}

/// Added-token patterns (scalars, index into `addedTokens`), looked up by their first scalar.
private struct AddedMatcher: Sendable {
    let patterns: [(scalars: [Unicode.Scalar], index: Int)]
    let byFirst: [UInt32: [Int]]
    init(_ patterns: [(scalars: [Unicode.Scalar], index: Int)]) {
        self.patterns = patterns
        var m: [UInt32: [Int]] = [:]
        for (k, p) in patterns.enumerated() where !p.scalars.isEmpty { m[p.scalars[0].value, default: []].append(k) }
        byFirst = m
    }
}

/// A binary min-heap of merge candidates ordered by rank, then position (as `Merge`'s `Ord` in HF).
private struct MergeHeap {
    struct Entry { let rank: Int32; let pos: Int; let id: Int32 }
    private var a: [Entry] = []
    private static func less(_ x: Entry, _ y: Entry) -> Bool { x.rank != y.rank ? x.rank < y.rank : x.pos < y.pos }
    mutating func push(_ e: Entry) {
        a.append(e)
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            guard Self.less(a[i], a[p]) else { break }
            a.swapAt(i, p); i = p
        }
    }
    mutating func pop() -> Entry? {
        guard let top = a.first else { return nil }
        let last = a.removeLast()
        if !a.isEmpty {
            a[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < a.count && Self.less(a[l], a[m]) { m = l }
                if r < a.count && Self.less(a[r], a[m]) { m = r }
                if m == i { break }
                a.swapAt(i, m); i = m
            }
        }
        return top
    }
}

/// Typed access to JSONSerialization values, every failure naming the field.
private struct JSONFields {
    let fail: (String, String) -> TokenizerError

    func object(_ v: Any?, _ field: String) throws -> [String: Any] {
        guard let v else { throw fail(field, "is missing") }
        guard let o = v as? [String: Any] else { throw fail(field, "is not a JSON object") }
        return o
    }
    func array(_ v: Any?, _ field: String) throws -> [Any] {
        guard let v else { throw fail(field, "is missing") }
        guard let a = v as? [Any] else { throw fail(field, "is not a JSON array") }
        return a
    }
    func string(_ v: Any?, _ field: String) throws -> String {
        guard let v else { throw fail(field, "is missing") }
        guard let s = v as? String else { throw fail(field, "is not a string") }
        return s
    }
    func optionalString(_ v: Any?, _ field: String) throws -> String? {
        guard let v, !(v is NSNull) else { return nil }
        return try string(v, field)
    }
    func isBool(_ v: Any) -> Bool {
        // JSONSerialization gives booleans as NSNumbers of type char ("c"), integers as "i"/"q", reals as "d".
        guard let n = v as? NSNumber else { return false }
        return String(cString: n.objCType) == "c"
    }
    func bool(_ v: Any?, _ field: String, default d: Bool) throws -> Bool {
        guard let v, !(v is NSNull) else { return d }
        guard let n = v as? NSNumber, isBool(n) else { throw fail(field, "is not true or false") }
        return n.boolValue
    }
    func number(_ v: Any?, _ field: String) throws -> Double {
        guard let v else { throw fail(field, "is missing") }
        guard let n = v as? NSNumber, !isBool(n) else { throw fail(field, "is not a number") }
        return n.doubleValue
    }
    /// A token id: an integer in 0..<2^31.
    func id(_ v: Any?, _ field: String) throws -> Int32 {
        let d = try number(v, field)
        guard d >= 0, d < Double(Int32.max), d.rounded() == d, let i = Int32(exactly: d) else {
            throw fail(field, "\(d) is not a token id (an integer from 0 to \(Int32.max - 1))")
        }
        return i
    }
}

// MARK: - GGUF

extension BPETokenizer {
    /// llama.cpp's `tokenizer.ggml.pre` names of the split regexes (its converter writes "llama-bpe" for
    /// Llama-3 and "qwen2" for Qwen2; "llama3" is an older spelling).
    static let ggufPreNames: [String: PreTokenizerPattern] = ["llama-bpe": .llama3, "llama3": .llama3, "qwen2": .qwen2]
    public var ggufPre: String { pattern == .llama3 ? "llama-bpe" : "qwen2" }

    /// The `tokenizer.ggml.*` metadata llama.cpp's converter writes for a byte-level BPE ("gpt2") tokenizer:
    /// tokens padded to `rows` with `[PAD<id>]` (type UNUSED) as it pads, token types (special added tokens and
    /// those that look special CONTROL, other added tokens USER_DEFINED), the merges as "a b" strings, the pre-tokenizer name, and BOS
    /// as the post-processor adds it.
    public func ggufMetadata(rows: Int, eosID: Int32) -> [(String, GGUFValue)] {
        typealias K = SentencePieceModel.Key
        var kinds = [Int32](repeating: SentencePieceModel.PieceType.normal.rawValue, count: tokens.count)
        for t in addedTokens {
            kinds[Int(t.id)] = t.special || Self.looksSpecial(t.content) ? SentencePieceModel.PieceType.control.rawValue
                : SentencePieceModel.PieceType.userDefined.rawValue
        }
        var names = tokens
        for id in tokens.count..<max(rows, tokens.count) {   // the converter names a padding row by its id
            names.append("[PAD\(id)]")
            kinds.append(SentencePieceModel.PieceType.unused.rawValue)
        }
        var m: [(String, GGUFValue)] = [
            (K.model, .string("gpt2")),
            (K.pre, .string(ggufPre)),
            (K.tokens, .array(.string, names.map { .string($0) })),
            (K.tokenType, .array(.int32, kinds.map { .int32($0) })),
            (K.merges, .array(.string, mergeList.map { .string(tokens[Int($0.0)] + " " + tokens[Int($0.1)]) })),
        ]
        if let bos = prefixIDs.first { m.append((K.bos, .uint32(UInt32(bos)))) }
        if eosID >= 0 && Int(eosID) < tokens.count { m.append((K.eos, .uint32(UInt32(eosID)))) }
        m += [(K.addBOS, .bool(!prefixIDs.isEmpty)), (K.addEOS, .bool(false))]
        return m
    }

    /// llama.cpp's converter (`does_token_look_special`) writes these added tokens as CONTROL even when the
    /// tokenizer.json does not mark them special.
    static func looksSpecial(_ t: String) -> Bool {
        ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(t) || (t.hasPrefix("<|") && t.hasSuffix("|>"))
            || (t.hasPrefix("<\u{FF5C}") && t.hasSuffix("\u{FF5C}>")) || (t.hasPrefix("<unused") && t.hasSuffix(">"))
    }

    /// The tokenizer of a GGUF file whose `tokenizer.ggml.model` is "gpt2", as Hugging Face would run the
    /// tokenizer.json it was converted from: the pre-tokenizer from `tokenizer.ggml.pre` (Qwen2's with NFC,
    /// Llama-3's with ignore_merges, as both llama.cpp and HF do), CONTROL and USER_DEFINED tokens matched
    /// before BPE (as special / added tokens, without strip flags: GGUF does not record them), BOS when
    /// `add_bos_token` is true (absent: as llama.cpp, true for llama-bpe, false for qwen2). Trailing `[PADn]` UNUSED tokens (embedding rows past the tokenizer) are left
    /// out. Returns the tokenizer and the EOS id (-1 when absent).
    public static func fromGGUF(_ g: GGUFFile) throws -> (BPETokenizer, eosID: Int32) {
        typealias K = SentencePieceModel.Key
        func fail(_ key: String, _ reason: String) -> GGUFError { GGUFError(file: g.path, key: key, reason: reason) }
        let source = g.path + " (GGUF vocabulary)"
        var tokens = try g.stringArray(K.tokens)
        guard !tokens.isEmpty else { throw fail(K.tokens, "the vocabulary is empty") }
        guard tokens.count < Int(Int32.max) else { throw fail(K.tokens, "has too many tokens") }
        let types = try g.intArray(K.tokenType)
        guard types.count == tokens.count else {
            throw fail(K.tokenType, "has \(types.count) entries but \(K.tokens) has \(tokens.count)")
        }
        if let bad = types.firstIndex(where: { SentencePieceModel.PieceType(rawValue: Int32(clamping: $0)) == nil }) {
            throw fail(K.tokenType, "token \(bad) ('\(tokens[bad])') has type \(types[bad]), not one of 1...6")
        }
        let preName = try g.stringIfPresent(K.pre) ?? "default"
        guard let pattern = ggufPreNames[preName] else {
            throw fail(K.pre, "pre-tokenizer '\(preName)' is not supported (only 'llama-bpe' and 'qwen2')")
        }
        var n = tokens.count
        while n > 1 && types[n - 1] == Int(SentencePieceModel.PieceType.unused.rawValue) && tokens[n - 1].hasPrefix("[PAD") { n -= 1 }
        tokens.removeLast(tokens.count - n)
        var vocab: [[UInt8]: Int32] = [:]
        vocab.reserveCapacity(n)
        for (i, t) in tokens.enumerated() where vocab[Array(t.utf8)] == nil { vocab[Array(t.utf8)] = Int32(i) }
        let mergeStrings = try g.stringArrayIfPresent(K.merges) ?? []
        guard mergeStrings.count < Int(Int32.max) else { throw fail(K.merges, "has too many merges") }
        var merges: [UInt64: (rank: Int32, id: Int32)] = [:]
        merges.reserveCapacity(mergeStrings.count)
        var mergeList: [(Int32, Int32)] = []
        mergeList.reserveCapacity(mergeStrings.count)
        for (rank, s) in mergeStrings.enumerated() {
            let parts = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2 else { throw fail(K.merges, "entry \(rank) '\(s)' is not two tokens separated by one space") }
            guard let l = vocab[Array(parts[0].utf8)], let r = vocab[Array(parts[1].utf8)] else {
                throw fail(K.merges, "entry \(rank) '\(s)' names a token that is not in \(K.tokens)")
            }
            guard let merged = vocab[Array((parts[0] + parts[1]).utf8)] else {
                throw fail(K.merges, "entry \(rank) '\(s)': the merged token '\(parts[0] + parts[1])' is not in \(K.tokens)")
            }
            merges[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))] = (Int32(rank), merged)
            mergeList.append((l, r))
        }
        var added: [AddedToken] = []
        for i in 0..<n {
            let t = types[i]
            guard t == Int(SentencePieceModel.PieceType.control.rawValue) || t == Int(SentencePieceModel.PieceType.userDefined.rawValue),
                  !tokens[i].isEmpty else { continue }
            added.append(AddedToken(id: Int32(i), content: tokens[i], special: t == Int(SentencePieceModel.PieceType.control.rawValue),
                                    lstrip: false, rstrip: false, singleWord: false, normalized: false))
        }
        func id(_ key: String) throws -> Int32? {
            guard let i = try g.uintIfPresent(key) else { return nil }
            guard i < n else { throw fail(key, "id \(i) is outside the vocabulary of \(n) tokens") }
            return Int32(i)
        }
        let bos = try id(K.bos)
        let eos = try id(K.eos) ?? -1
        var prefix: [Int32] = []
        // Absent: llama.cpp's default for the pre-tokenizer (llama-bpe adds BOS, qwen2 does not).
        if try g.boolIfPresent(K.addBOS) ?? (pattern == .llama3) {
            guard let bos else { throw fail(K.bos, "missing, but \(K.addBOS) is true") }
            prefix = [bos]
        }
        let tok = BPETokenizer(source: source, tokens: tokens, vocab: vocab, addedTokens: added, mergeList: mergeList, merges: merges,
                               ignoreMerges: pattern == .llama3, fuseUnk: false, byteFallback: false, unkID: nil,
                               nfc: pattern == .qwen2, pattern: pattern, addPrefixSpace: false, prefixIDs: prefix, suffixIDs: [],
                               decodes: true)
        return (tok, eos)
    }
}

// MARK: - tokenizer_config.json

/// What a checkpoint directory's `tokenizer_config.json` says that the tokenizer files do not: the EOS and BOS
/// token names (a tokenizer.json does not mark them), and the chat template (a string, or the
/// `[{"name", "template"}]` list whose "default" entry is the template; `chat_template.jinja` when present
/// takes precedence, as transformers does).
public struct TokenizerConfig: Sendable, Equatable {
    public var bosToken: String?
    public var eosToken: String?
    public var chatTemplate: String?

    public init(bosToken: String? = nil, eosToken: String? = nil, chatTemplate: String? = nil) {
        self.bosToken = bosToken; self.eosToken = eosToken; self.chatTemplate = chatTemplate
    }

    /// nil when the directory has neither tokenizer_config.json nor chat_template.jinja.
    public static func read(directory dir: String) throws -> TokenizerConfig? {
        let path = dir + "/tokenizer_config.json"
        let jinja = dir + "/chat_template.jinja"
        let hasConfig = HFCheckpoint.exists(path), hasJinja = HFCheckpoint.exists(jinja)
        guard hasConfig || hasJinja else { return nil }
        var c = TokenizerConfig()
        if hasConfig {
            func fail(_ field: String, _ reason: String) -> TokenizerError { TokenizerError(source: path, reason: "\(field): \(reason)") }
            let root: [String: Any]
            do {
                guard let r = try JSONSerialization.jsonObject(with: try Files.readData(path, limit: 64 << 20)) as? [String: Any] else {
                    throw fail("tokenizer_config.json", "is not a JSON object")
                }
                root = r
            } catch let e as TokenizerError { throw e } catch let e as FileError { throw e } catch {
                throw TokenizerError(source: path, reason: "is not valid JSON: \(error.localizedDescription)")
            }
            /// A special token is a string or an AddedToken object {"content": ...}; null means none.
            func token(_ key: String) throws -> String? {
                guard let v = root[key], !(v is NSNull) else { return nil }
                if let s = v as? String { return s }
                if let o = v as? [String: Any], let s = o["content"] as? String { return s }
                throw fail(key, "is neither a string nor an object with a \"content\" string")
            }
            c.bosToken = try token("bos_token")
            c.eosToken = try token("eos_token")
            if let t = root["chat_template"], !(t is NSNull) {
                if let s = t as? String {
                    c.chatTemplate = s
                } else if let list = t as? [Any] {
                    for (i, e) in list.enumerated() {
                        guard let o = e as? [String: Any], let name = o["name"] as? String, let tpl = o["template"] as? String else {
                            throw fail("chat_template[\(i)]", "is not an object with \"name\" and \"template\" strings")
                        }
                        if name == "default" { c.chatTemplate = tpl }
                    }
                } else {
                    throw fail("chat_template", "is neither a string nor a list of named templates")
                }
            }
        }
        if hasJinja { c.chatTemplate = try Files.readText(jinja, limit: 16 << 20) }
        return c
    }
}
