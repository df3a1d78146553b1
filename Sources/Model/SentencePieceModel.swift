import Foundation
import Quant
import Formats

/// SentencePiece models (`sentencepiece.ModelProto`, what a `tokenizer.model` file holds) built from a
/// vocabulary, read back, and moved to and from the tokenizer metadata of llama.cpp's GGUF files.
///
/// The protobuf wire format is written by hand. Field numbers are those of sentencepiece_model.proto
/// (checked against the descriptor in the Python package's sentencepiece_model_pb2.py, sentencepiece 0.2):
///
///     ModelProto      1 pieces (repeated SentencePiece) · 2 trainer_spec · 3 normalizer_spec · 5 denormalizer_spec
///     SentencePiece   1 piece (string) · 2 score (float) · 3 type (enum, default NORMAL)
///     TrainerSpec     3 model_type (UNIGRAM=1, BPE=2, WORD=3, CHAR=4) · 4 vocab_size · 24 treat_whitespace_as_suffix
///                     25 split_digits · 26 allow_whitespace_only_pieces · 35 byte_fallback
///                     40 unk_id (default 0) · 41 bos_id (1) · 42 eos_id (2) · 43 pad_id (-1)
///                     45 unk_piece · 46 bos_piece · 47 eos_piece · 48 pad_piece
///     NormalizerSpec  1 name · 2 precompiled_charsmap (bytes) · 3 add_dummy_prefix (default true)
///                     4 remove_extra_whitespaces (default true) · 5 escape_whitespaces (default true)
///
/// Piece types (SentencePiece.Type, the same numbering as GGUF's `tokenizer.ggml.token_type`):
/// 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
public enum SentencePieceModel {
    public typealias Piece = (piece: String, score: Float, type: Int32)

    public enum PieceType: Int32, Sendable, CaseIterable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    /// GGUF keys of the tokenizer (llama.cpp's `tokenizer.ggml.*`).
    public enum Key {
        public static let model = "tokenizer.ggml.model"
        public static let tokens = "tokenizer.ggml.tokens"
        public static let scores = "tokenizer.ggml.scores"
        public static let tokenType = "tokenizer.ggml.token_type"
        public static let bos = "tokenizer.ggml.bos_token_id"
        public static let eos = "tokenizer.ggml.eos_token_id"
        public static let unk = "tokenizer.ggml.unknown_token_id"
        public static let pad = "tokenizer.ggml.padding_token_id"
        public static let addBOS = "tokenizer.ggml.add_bos_token"
        public static let addEOS = "tokenizer.ggml.add_eos_token"
        public static let addSpacePrefix = "tokenizer.ggml.add_space_prefix"
        public static let removeExtraWhitespaces = "tokenizer.ggml.remove_extra_whitespaces"
        /// Byte-level BPE ("gpt2"): the merges ("a b") and the pre-tokenizer's name.
        public static let merges = "tokenizer.ggml.merges"
        public static let pre = "tokenizer.ggml.pre"
        public static let chatTemplate = "tokenizer.chat_template"
    }

    // MARK: Writing

    /// A serialized `ModelProto` for a BPE model with LLaMA-2's normalization: name "identity", no
    /// precompiled charsmap, `add_dummy_prefix` and `remove_extra_whitespaces` as given (LLaMA-2: true, false),
    /// `escape_whitespaces` true. The trainer spec records BPE, the vocabulary size, byte fallback and the
    /// special ids with their pieces (what SentencePiece looks the special ids up by), and LLaMA-2's
    /// training flags that do not affect encoding (split_digits, allow_whitespace_only_pieces).
    /// An id of -1 (or out of range) means "none".
    public static func serialize(pieces: [(piece: String, score: Float, type: Int32)], unkID: Int, bosID: Int,
                                 eosID: Int, padID: Int, addDummyPrefix: Bool = true, removeExtraWhitespaces: Bool = false,
                                 byteFallback: Bool = true) -> Data {
        var model = ProtoWriter()
        for p in pieces {
            var sp = ProtoWriter()
            sp.string(1, p.piece)        // SentencePiece.piece = 1
            sp.float(2, p.score)         // SentencePiece.score = 2
            sp.int32(3, p.type)          // SentencePiece.type = 3
            model.message(1, sp)         // ModelProto.pieces = 1
        }

        var trainer = ProtoWriter()
        trainer.int32(3, 2)              // TrainerSpec.model_type = 3: BPE = 2
        trainer.int32(4, Int32(clamping: pieces.count))   // vocab_size = 4
        trainer.bool(25, true)           // split_digits = 25 (training only; LLaMA-2's value)
        trainer.bool(26, true)           // allow_whitespace_only_pieces = 26 (training only; LLaMA-2's value)
        trainer.bool(35, byteFallback)   // byte_fallback = 35
        func id(_ i: Int) -> Int32 { i >= 0 && i < pieces.count ? Int32(i) : -1 }
        trainer.int32(40, id(unkID))     // unk_id = 40
        trainer.int32(41, id(bosID))     // bos_id = 41
        trainer.int32(42, id(eosID))     // eos_id = 42
        trainer.int32(43, id(padID))     // pad_id = 43
        // unk_piece = 45, bos_piece = 46, eos_piece = 47, pad_piece = 48: SentencePiece finds the special ids
        // through these pieces, so they must be the vocabulary's own.
        for (field, i) in [(45, unkID), (46, bosID), (47, eosID), (48, padID)] where id(i) >= 0 {
            trainer.string(field, pieces[i].piece)
        }
        model.message(2, trainer)        // ModelProto.trainer_spec = 2

        var normalizer = ProtoWriter()
        normalizer.string(1, "identity") // NormalizerSpec.name = 1
        normalizer.bytes(2, [])          // precompiled_charsmap = 2 (empty: no normalization)
        normalizer.bool(3, addDummyPrefix)   // add_dummy_prefix = 3
        normalizer.bool(4, removeExtraWhitespaces)   // remove_extra_whitespaces = 4
        normalizer.bool(5, true)         // escape_whitespaces = 5
        model.message(3, normalizer)     // ModelProto.normalizer_spec = 3
        return Data(model.bytes)
    }

    // MARK: Reading

    /// What a serialized ModelProto holds that matters for encoding (proto defaults where fields are absent).
    public struct Contents: Sendable {
        public var pieces: [Piece] = []
        /// TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char.
        public var modelType: Int32 = 1
        public var vocabSize: Int32 = 8000
        public var byteFallback = false
        public var unkID = 0, bosID = 1, eosID = 2, padID = -1
        public var treatWhitespaceAsSuffix = false
        public var normalizerName = ""
        public var precompiledCharsmap = Data()
        public var addDummyPrefix = true
        public var removeExtraWhitespaces = true
        public var escapeWhitespaces = true
    }

    /// Parses a serialized ModelProto (a `tokenizer.model` file).
    public static func parse(_ data: Data, source: String) throws -> Contents {
        func fail(_ reason: String) -> TokenizerError {
            TokenizerError(source: source, reason: "not a SentencePiece model: \(reason)")
        }
        var c = Contents()
        do {
            var model = ProtoReader(Array(data))
            while let (field, wire) = try model.next() {
                switch (field, wire) {
                case (1, 2):
                    var sp = ProtoReader(try model.lengthDelimited())
                    var p: Piece = ("", 0, 1)
                    while let (f, w) = try sp.next() {
                        switch (f, w) {
                        case (1, 2): p.piece = try sp.string()
                        case (2, 5): p.score = Float(bitPattern: try sp.fixed32())
                        case (3, 0): p.type = Int32(truncatingIfNeeded: try sp.varint())
                        default: try sp.skip(w)
                        }
                    }
                    c.pieces.append(p)
                case (2, 2):
                    var t = ProtoReader(try model.lengthDelimited())
                    while let (f, w) = try t.next() {
                        switch (f, w) {
                        case (3, 0): c.modelType = try t.int32()
                        case (4, 0): c.vocabSize = try t.int32()
                        case (24, 0): c.treatWhitespaceAsSuffix = try t.varint() != 0
                        case (35, 0): c.byteFallback = try t.varint() != 0
                        case (40, 0): c.unkID = Int(try t.int32())
                        case (41, 0): c.bosID = Int(try t.int32())
                        case (42, 0): c.eosID = Int(try t.int32())
                        case (43, 0): c.padID = Int(try t.int32())
                        default: try t.skip(w)
                        }
                    }
                case (3, 2):
                    var n = ProtoReader(try model.lengthDelimited())
                    while let (f, w) = try n.next() {
                        switch (f, w) {
                        case (1, 2): c.normalizerName = try n.string()
                        case (2, 2): c.precompiledCharsmap = Data(try n.lengthDelimited())
                        case (3, 0): c.addDummyPrefix = try n.varint() != 0
                        case (4, 0): c.removeExtraWhitespaces = try n.varint() != 0
                        case (5, 0): c.escapeWhitespaces = try n.varint() != 0
                        default: try n.skip(w)
                        }
                    }
                default: try model.skip(wire)
                }
            }
        } catch let e as ProtoReader.Failure {
            throw fail(e.reason)
        }
        guard !c.pieces.isEmpty else { throw fail("no pieces") }
        return c
    }

    // MARK: GGUF

    /// The serialized SentencePiece model of a llama.cpp GGUF file's `tokenizer.ggml.*` metadata
    /// (`tokenizer.ggml.model` must be "llama": SentencePiece BPE with byte fallback).
    public static func fromGGUF(_ g: GGUFFile) throws -> Data {
        func fail(_ key: String, _ reason: String) -> GGUFError { GGUFError(file: g.path, key: key, reason: reason) }
        let model = try g.string(Key.model)
        guard model == "llama" else {
            throw fail(Key.model, "tokenizer model '\(model)' is not SentencePiece ('llama'): it cannot be rebuilt as a tokenizer.model; pass the model's tokenizer with --tokenizer FILE")
        }
        let tokens = try g.stringArray(Key.tokens)
        guard !tokens.isEmpty else { throw fail(Key.tokens, "the vocabulary is empty") }
        let scores = try g.floatArray(Key.scores)
        guard scores.count == tokens.count else {
            throw fail(Key.scores, "has \(scores.count) entries but \(Key.tokens) has \(tokens.count)")
        }
        let types = try g.intArray(Key.tokenType)
        guard types.count == tokens.count else {
            throw fail(Key.tokenType, "has \(types.count) entries but \(Key.tokens) has \(tokens.count)")
        }
        if let bad = types.firstIndex(where: { PieceType(rawValue: Int32(clamping: $0)) == nil }) {
            throw fail(Key.tokenType, "token \(bad) ('\(tokens[bad])') has type \(types[bad]), not one of 1...6")
        }
        func id(_ key: String) throws -> Int? {
            guard let i = try g.uintIfPresent(key) else { return nil }
            guard i < tokens.count else { throw fail(key, "id \(i) is outside the vocabulary of \(tokens.count) tokens") }
            return i
        }
        let bos = try g.uint(Key.bos)
        let eos = try g.uint(Key.eos)
        for (key, i) in [(Key.bos, bos), (Key.eos, eos)] where i >= tokens.count {
            throw fail(key, "id \(i) is outside the vocabulary of \(tokens.count) tokens")
        }
        // llama.cpp's converter writes no unknown_token_id when the HF files do not name one: use the
        // UNKNOWN piece then, as SentencePiece itself does.
        guard let unk = try id(Key.unk) ?? types.firstIndex(of: Int(PieceType.unknown.rawValue)) else {
            throw fail(Key.unk, "missing, and no token has type 2 (unknown)")
        }
        var pad = try id(Key.pad) ?? -1
        if [unk, bos, eos].contains(pad) { pad = -1 }   // e.g. pad = unk in some configs: SentencePiece wants distinct ids
        // llama.cpp's defaults when the keys are absent.
        let addPrefix = try g.boolIfPresent(Key.addSpacePrefix) ?? true
        let removeSpaces = try g.boolIfPresent(Key.removeExtraWhitespaces) ?? false
        let pieces = (0..<tokens.count).map { (piece: tokens[$0], score: scores[$0], type: Int32(types[$0])) }
        return serialize(pieces: pieces, unkID: unk, bosID: bos, eosID: eos, padID: pad, addDummyPrefix: addPrefix,
                         removeExtraWhitespaces: removeSpaces, byteFallback: types.contains(Int(PieceType.byte.rawValue)))
    }

    /// The `tokenizer.ggml.*` metadata llama.cpp's converter writes for a SentencePiece (LLaMA) tokenizer.
    public static func ggufMetadata(_ c: Contents, addBOS: Bool = true, addEOS: Bool = false) -> [(String, GGUFValue)] {
        var m: [(String, GGUFValue)] = [
            (Key.model, .string("llama")),
            (Key.tokens, .array(.string, c.pieces.map { .string($0.piece) })),
            (Key.scores, .array(.float32, c.pieces.map { .float32($0.score) })),
            (Key.tokenType, .array(.int32, c.pieces.map { .int32($0.type) })),
        ]
        for (key, i) in [(Key.bos, c.bosID), (Key.eos, c.eosID), (Key.unk, c.unkID), (Key.pad, c.padID)]
        where i >= 0 && i < c.pieces.count {
            m.append((key, .uint32(UInt32(i))))
        }
        m += [(Key.addBOS, .bool(addBOS)), (Key.addEOS, .bool(addEOS)), (Key.addSpacePrefix, .bool(c.addDummyPrefix)),
              (Key.removeExtraWhitespaces, .bool(c.removeExtraWhitespaces))]
        return m
    }
}

// MARK: - Protobuf wire format

/// Protobuf encoding: a field is a varint key `number << 3 | wire type` (0 varint, 2 length-delimited,
/// 5 fixed32) followed by its value; int32 values are varints of their 64-bit sign extension.
private struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func key(_ field: Int, _ wire: Int) { varint(UInt64(field << 3 | wire)) }
    mutating func int32(_ field: Int, _ v: Int32) { key(field, 0); varint(UInt64(bitPattern: Int64(v))) }
    mutating func bool(_ field: Int, _ v: Bool) { key(field, 0); varint(v ? 1 : 0) }
    mutating func float(_ field: Int, _ v: Float) {
        key(field, 5)
        withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 }
    }
    mutating func bytes(_ field: Int, _ b: [UInt8]) { key(field, 2); varint(UInt64(b.count)); bytes += b }
    mutating func string(_ field: Int, _ s: String) { bytes(field, Array(s.utf8)) }
    mutating func message(_ field: Int, _ m: ProtoWriter) { bytes(field, m.bytes) }
}

private struct ProtoReader {
    struct Failure: Error { let reason: String }
    let b: [UInt8]
    var pos = 0
    init<C: Collection>(_ bytes: C) where C.Element == UInt8 { b = Array(bytes) }

    mutating func varint() throws -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard pos < b.count else { throw Failure(reason: "truncated varint at byte \(pos)") }
            guard shift < 64 else { throw Failure(reason: "varint longer than 10 bytes at byte \(pos)") }
            let x = b[pos]
            pos += 1
            v |= UInt64(x & 0x7F) << shift
            if x < 0x80 { return v }
            shift += 7
        }
    }
    mutating func int32() throws -> Int32 { Int32(truncatingIfNeeded: try varint()) }

    /// The next field's number and wire type, or nil at the end.
    mutating func next() throws -> (Int, Int)? {
        guard pos < b.count else { return nil }
        let k = try varint()
        guard k >> 3 > 0, k >> 3 < 1 << 29 else { throw Failure(reason: "invalid field key \(k)") }
        return (Int(k >> 3), Int(k & 7))
    }

    mutating func lengthDelimited() throws -> ArraySlice<UInt8> {
        let n = try varint()
        guard n <= UInt64(b.count - pos) else {
            throw Failure(reason: "length \(n) at byte \(pos) runs past the end (\(b.count) bytes)")
        }
        defer { pos += Int(n) }
        return b[pos..<(pos + Int(n))]
    }

    mutating func string() throws -> String {
        let s = try lengthDelimited()
        guard let str = String(validating: s, as: UTF8.self) else { throw Failure(reason: "a piece is not valid UTF-8") }
        return str
    }

    mutating func fixed32() throws -> UInt32 {
        guard b.count - pos >= 4 else { throw Failure(reason: "truncated fixed32 at byte \(pos)") }
        defer { pos += 4 }
        return UInt32(b[pos]) | UInt32(b[pos + 1]) << 8 | UInt32(b[pos + 2]) << 16 | UInt32(b[pos + 3]) << 24
    }

    mutating func skip(_ wire: Int) throws {
        switch wire {
        case 0: _ = try varint()
        case 1: guard b.count - pos >= 8 else { throw Failure(reason: "truncated fixed64") }; pos += 8
        case 2: _ = try lengthDelimited()
        case 5: _ = try fixed32()
        default: throw Failure(reason: "unsupported wire type \(wire) at byte \(pos)")
        }
    }
}
