import CSentencePiece
import Foundation
import Quant
import Formats

public struct TokenizerError: LocalizedError, Equatable {
    public let source: String
    public let reason: String
    public var errorDescription: String? { "\(source): \(reason)" }
}

/// The one tokenizer interface: SentencePiece (`tokenizer.model`, LLaMA-2 and Mistral) or byte-level BPE
/// (`tokenizer.json`, Llama-3 and Qwen2; `BPETokenizer`).
///
/// SentencePiece has the semantics of Hugging Face's slow `LlamaTokenizer` (legacy mode): BOS, then the text
/// split on the literal special pieces (`<s>`, `</s>`, `<unk>`), each literal mapped to its id and each other
/// (non-empty) chunk encoded by SentencePiece on its own. BPE encodes as HF's `tokenizers` does.
public final class Tokenizer: @unchecked Sendable {
    /// SentencePiece's model; nil for BPE.
    private let handle: OpaquePointer?
    /// The byte-level BPE tokenizer; nil for SentencePiece.
    public let bpe: BPETokenizer?
    public let source: String
    public let vocabSize: Int
    /// -1 when the tokenizer adds no BOS (Qwen2).
    public let bosID: Int32
    /// -1 when unknown (a tokenizer.json does not name its EOS).
    public let eosID: Int32
    public let unkID: Int32
    /// -1 when the model has no padding piece.
    public let padID: Int32
    /// Literal strings that map straight to special ids (longest match first at a position).
    private let specials: [(bytes: [UInt8], id: Int32)]
    /// Which bytes begin one of `specials`.
    private let specialStarts: [Bool]
    /// The file's bytes (a `tokenizer.model`, or a `tokenizer.json` for BPE).
    public let serialized: Data

    /// Whether `encode` puts a BOS first (then a prompt cut to a budget keeps it first): SentencePiece unless
    /// the GGUF says `add_bos_token = false`; BPE when its post-processor adds one.
    public var addsBOS: Bool { bpe == nil ? addBOSToken : bosID >= 0 }
    private let addBOSToken: Bool

    /// A `tokenizer.json` (name ending in .json) as BPE, any other file as a SentencePiece `tokenizer.model`.
    /// For BPE the EOS is the `eos_token` of a `tokenizer_config.json` beside it (tokenizer.json does not say).
    public convenience init(path: String) throws {
        if path.hasSuffix(".json") {
            let data = try Files.readData(path, limit: 256 << 20)
            let bpe = try BPETokenizer(json: data, source: path)
            var eos: Int32 = -1
            let dir = (path as NSString).deletingLastPathComponent
            if let name = try TokenizerConfig.read(directory: dir.isEmpty ? "." : dir)?.eosToken {
                guard let id = bpe.id(of: name) else {
                    throw TokenizerError(source: dir + "/tokenizer_config.json", reason: "eos_token: '\(name)' is not a token of \(path)")
                }
                eos = id
            }
            try self.init(bpe: bpe, serialized: data, eosID: eos)
        } else {
            try self.init(serialized: try Files.readData(path, limit: 256 << 20), source: path)
        }
    }

    public init(bpe: BPETokenizer, serialized: Data, eosID: Int32 = -1) throws {
        handle = nil
        addBOSToken = true
        self.bpe = bpe
        source = bpe.source
        self.serialized = serialized
        vocabSize = bpe.vocabSize
        bosID = bpe.prefixIDs.first ?? -1
        self.eosID = eosID
        unkID = bpe.unkID ?? -1
        padID = -1
        specials = []
        specialStarts = [Bool](repeating: false, count: 256)
    }

    /// A SentencePiece model; `addBOS` false for a GGUF whose `tokenizer.ggml.add_bos_token` is false.
    public init(serialized: Data, source: String, addBOS: Bool = true) throws {
        var err = [CChar](repeating: 0, count: 512)
        let h = serialized.withUnsafeBytes { raw in
            spm_load_from_bytes(raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count, &err, err.count)
        }
        guard let h else {
            throw TokenizerError(source: source, reason: "not a SentencePiece model: \(String(cString: err))")
        }
        handle = h
        bpe = nil
        addBOSToken = addBOS
        self.source = source
        self.serialized = serialized
        vocabSize = Int(spm_piece_size(h))
        bosID = spm_bos_id(h)
        eosID = spm_eos_id(h)
        unkID = spm_unk_id(h)
        padID = spm_pad_id(h)
        // The special pieces a text may spell: unk, and every control piece (<s>, </s>; Mistral v0.3's [INST],
        // [/INST], … that its chat template writes), as HF's tokenizers split out added special tokens.
        var sp: [(bytes: [UInt8], id: Int32)] = []
        let n = Int32(vocabSize)
        var ids = [unkID, bosID, eosID].filter { $0 >= 0 && $0 < n }
        for id in 0..<n where spm_is_control(h, id) != 0 && !ids.contains(id) { ids.append(id) }
        for id in ids {
            let bytes = Array(String(cString: spm_id_to_piece(h, id)).utf8)
            if !bytes.isEmpty { sp.append((bytes, id)) }
        }
        specials = sp.sorted { $0.bytes.count > $1.bytes.count }
        var starts = [Bool](repeating: false, count: 256)
        for s in sp { starts[Int(s.bytes[0])] = true }
        specialStarts = starts
        guard bosID >= 0 else { throw TokenizerError(source: source, reason: "the model defines no BOS id") }
    }

    deinit { if let handle { spm_free(handle) } }

    /// The tokenizer of a GGUF file: `tokenizer.ggml.model` "llama" (SentencePiece, with `add_space_prefix`,
    /// `remove_extra_whitespaces` and `add_bos_token` honoured) or "gpt2" (byte-level BPE).
    public static func fromGGUF(_ g: GGUFFile) throws -> Tokenizer {
        let key = SentencePieceModel.Key.model
        let model = try g.string(key)
        switch model {
        case "llama":
            return try Tokenizer(serialized: try SentencePieceModel.fromGGUF(g), source: g.path + " (GGUF vocabulary)",
                                 addBOS: try g.boolIfPresent(SentencePieceModel.Key.addBOS) ?? true)
        case "gpt2":
            let (bpe, eos) = try BPETokenizer.fromGGUF(g)
            return try Tokenizer(bpe: bpe, serialized: Data(), eosID: eos)
        default:
            throw GGUFError(file: g.path, key: key, reason: "tokenizer model '\(model)' is not supported ('llama': SentencePiece, 'gpt2': byte-level BPE); pass the model's tokenizer with --tokenizer FILE")
        }
    }

    /// Ids as HF's `LlamaTokenizer(legacy=True)(text)` gives them (BOS added unless `addBOS` is false); for
    /// BPE as `tokenizer.encode(text, add_special_tokens=addBOS)` (the post-processor adds BOS or not).
    public func encode(_ text: String, addBOS: Bool = true) throws -> [Int32] {
        if let bpe { return bpe.encode(text, addSpecialTokens: addBOS) }
        var ids: [Int32] = addBOS && addBOSToken ? [bosID] : []
        let bytes = Array(text.utf8)
        var chunkStart = 0
        var i = 0
        while i < bytes.count {
            if specialStarts[Int(bytes[i])], let s = specials.first(where: { matches($0.bytes, bytes, at: i) }) {
                if chunkStart < i { ids += try encodePlain(bytes[chunkStart..<i]) }
                ids.append(s.id)
                i += s.bytes.count
                chunkStart = i
            } else {
                i += 1
            }
        }
        if chunkStart < bytes.count { ids += try encodePlain(bytes[chunkStart...]) }
        return ids
    }

    private func matches(_ pattern: [UInt8], _ bytes: [UInt8], at i: Int) -> Bool {
        guard i + pattern.count <= bytes.count else { return false }
        for k in 0..<pattern.count where bytes[i + k] != pattern[k] { return false }
        return true
    }

    /// SentencePiece's own encoding of `text` (no special-token splitting, no BOS).
    public func encodePlain<C: Collection>(_ utf8: C) throws -> [Int32] where C.Element == UInt8 {
        let bytes = Array(utf8)
        guard let handle else { return bpe?.encodePlain(String(decoding: bytes, as: UTF8.self)) ?? [] }
        var cap = bytes.count + 16
        while true {
            var out = [Int32](repeating: 0, count: cap)
            var n = 0
            var err = [CChar](repeating: 0, count: 512)
            let rc = bytes.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { c in
                    spm_encode(handle, c.baseAddress, c.count, &out, cap, &n, &err, err.count)
                }
            }
            if rc != 0 { throw TokenizerError(source: source, reason: "encode failed: \(String(cString: err))") }
            if n <= cap { return Array(out[0..<n]) }
            cap = n
        }
    }

    public func piece(_ id: Int32) -> String {
        guard id >= 0 && Int(id) < vocabSize else { return "<invalid:\(id)>" }
        guard let handle else { return bpe?.tokens[Int(id)] ?? "" }
        return String(cString: spm_id_to_piece(handle, id))
    }

    /// SentencePiece's score; 0 for BPE (whose order is the merges').
    public func score(_ id: Int32) -> Float {
        guard let handle, id >= 0 && Int(id) < vocabSize else { return 0 }
        return spm_get_score(handle, id)
    }

    /// The raw bytes a token stands for, as llama.cpp prints pieces: byte-fallback pieces `<0xAB>` are the
    /// byte, `▁` is a space, control pieces are their text.
    public func pieceBytes(_ id: Int32) -> [UInt8] {
        if let bpe { return bpe.tokenBytes(id) }
        let p = piece(id)
        guard let handle else { return [] }
        if spm_is_byte(handle, id) != 0, p.count == 6, let b = UInt8(p.dropFirst(3).prefix(2), radix: 16) { return [b] }
        return Array(p.replacingOccurrences(of: "\u{2581}", with: " ").utf8)
    }

    public func decode(_ ids: [Int32]) throws -> String {
        if let bpe { return bpe.decode(ids) }
        guard let handle else { return "" }
        var cap = ids.count * 8 + 16
        while true {
            var out = [CChar](repeating: 0, count: cap)
            var n = 0
            var err = [CChar](repeating: 0, count: 512)
            if spm_decode(handle, ids, ids.count, &out, cap, &n, &err, err.count) != 0 {
                throw TokenizerError(source: source, reason: "decode failed: \(String(cString: err))")
            }
            if n <= cap {
                return String(decoding: out[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            cap = n
        }
    }

    /// Trains a SentencePiece model with LLaMA-2's tokenizer settings (BPE, byte fallback, split digits,
    /// identity normalisation, no whitespace collapsing) and returns the serialized model.
    public static func train(corpus: String, vocabSize: Int) throws -> Data {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("llamaprobe-spm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let prefix = dir.appendingPathComponent("m").path
        // The trainer splits its argument string on spaces: give it a path without any.
        let input = dir.appendingPathComponent("corpus.txt").path
        do { try FileManager.default.copyItem(atPath: corpus, toPath: input) } catch {
            throw FileError(path: corpus, reason: "cannot read the tokenizer corpus: \(error.localizedDescription)")
        }
        let args = [
            "--input=\(input)", "--model_prefix=\(prefix)", "--vocab_size=\(vocabSize)", "--model_type=bpe",
            "--byte_fallback=true", "--split_digits=true", "--add_dummy_prefix=true",
            "--remove_extra_whitespaces=false", "--normalization_rule_name=identity",
            "--allow_whitespace_only_pieces=true", "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
            "--character_coverage=0.9995", "--num_threads=1", "--minloglevel=2", "--max_sentence_length=16384",
        ].joined(separator: " ")
        var err = [CChar](repeating: 0, count: 1024)
        guard spm_train(args, &err, err.count) == 0 else {
            throw TokenizerError(source: corpus, reason: "tokenizer training failed: \(String(cString: err))")
        }
        return try Data(contentsOf: URL(fileURLWithPath: prefix + ".model"))
    }
}
