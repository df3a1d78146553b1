import CSentencePiece
import Foundation
import Quant
import Formats

public struct TokenizerError: LocalizedError, Equatable {
    public let source: String
    public let reason: String
    public var errorDescription: String? { "\(source): \(reason)" }
}

/// SentencePiece tokenization with the semantics of Hugging Face's slow `LlamaTokenizer` (legacy mode):
/// BOS, then the text split on the literal special pieces (`<s>`, `</s>`, `<unk>`), each literal mapped to
/// its id and each other (non-empty) chunk encoded by SentencePiece on its own.
public final class Tokenizer: @unchecked Sendable {
    private let handle: OpaquePointer
    public let source: String
    public let vocabSize: Int
    public let bosID: Int32
    public let eosID: Int32
    public let unkID: Int32
    /// -1 when the model has no padding piece.
    public let padID: Int32
    /// Literal strings that map straight to special ids (longest match first at a position).
    private let specials: [(bytes: [UInt8], id: Int32)]
    /// The serialized model (what `tokenizer.model` holds).
    public let serialized: Data

    public convenience init(path: String) throws {
        try self.init(serialized: try Files.readData(path, limit: 256 << 20), source: path)
    }

    public init(serialized: Data, source: String) throws {
        var err = [CChar](repeating: 0, count: 512)
        let h = serialized.withUnsafeBytes { raw in
            spm_load_from_bytes(raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count, &err, err.count)
        }
        guard let h else {
            throw TokenizerError(source: source, reason: "not a SentencePiece model: \(String(cString: err))")
        }
        handle = h
        self.source = source
        self.serialized = serialized
        vocabSize = Int(spm_piece_size(h))
        bosID = spm_bos_id(h)
        eosID = spm_eos_id(h)
        unkID = spm_unk_id(h)
        padID = spm_pad_id(h)
        var sp: [(bytes: [UInt8], id: Int32)] = []
        for id in [unkID, bosID, eosID] where id >= 0 && id < vocabSize {
            sp.append((Array(String(cString: spm_id_to_piece(h, id)).utf8), id))
        }
        specials = sp.sorted { $0.bytes.count > $1.bytes.count }
        guard bosID >= 0 else { throw TokenizerError(source: source, reason: "the model defines no BOS id") }
    }

    deinit { spm_free(handle) }

    /// Ids as HF's `LlamaTokenizer(legacy=True)(text)` gives them (BOS added unless `addBOS` is false).
    public func encode(_ text: String, addBOS: Bool = true) throws -> [Int32] {
        var ids: [Int32] = addBOS ? [bosID] : []
        let bytes = Array(text.utf8)
        var chunkStart = 0
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "<"), let s = specials.first(where: { matches($0.bytes, bytes, at: i) }) {
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
        return String(cString: spm_id_to_piece(handle, id))
    }

    public func score(_ id: Int32) -> Float { spm_get_score(handle, id) }

    /// The raw bytes a token stands for, as llama.cpp prints pieces: byte-fallback pieces `<0xAB>` are the
    /// byte, `▁` is a space, control pieces are their text.
    public func pieceBytes(_ id: Int32) -> [UInt8] {
        let p = piece(id)
        if spm_is_byte(handle, id) != 0, p.count == 6, let b = UInt8(p.dropFirst(3).prefix(2), radix: 16) { return [b] }
        return Array(p.replacingOccurrences(of: "\u{2581}", with: " ").utf8)
    }

    public func decode(_ ids: [Int32]) throws -> String {
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
