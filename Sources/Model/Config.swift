import Foundation

public struct ConfigError: LocalizedError, Equatable {
    public let file: String
    public let key: String?
    public let reason: String
    public init(file: String, key: String? = nil, reason: String) { self.file = file; self.key = key; self.reason = reason }
    public var errorDescription: String? {
        if let key { return "\(file): '\(key)': \(reason)" }
        return "\(file): \(reason)"
    }
}

/// A token id or a list of them (`eos_token_id` is a list in some configs).
public enum TokenIDs: Codable, Equatable, Sendable {
    case one(Int)
    case many([Int])
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Int.self) { self = .one(v) } else { self = .many(try c.decode([Int].self)) }
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .one(let v): try c.encode(v)
        case .many(let v): try c.encode(v)
        }
    }
    public var first: Int? {
        switch self {
        case .one(let v): return v
        case .many(let v): return v.first
        }
    }
}

/// Any JSON value: for keys we only need to inspect (e.g. `rope_scaling`).
public indirect enum JSONValue: Codable, Equatable, Sendable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): try c.encode(n)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

/// A Hugging Face LLaMA `config.json`. Unknown keys are ignored; settings this implementation does not
/// compute (rope scaling, biases, other activations or architectures) are refused by `validate`.
public struct LlamaConfig: Codable, Equatable, Sendable {
    public var architectures: [String]?
    public var modelType: String?
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int?
    public var headDim: Int?
    public var rmsNormEps: Double
    public var ropeTheta: Double?
    public var ropeScaling: JSONValue?
    public var vocabSize: Int
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool?
    public var bosTokenId: TokenIDs?
    public var eosTokenId: TokenIDs?
    public var hiddenAct: String?
    public var attentionBias: Bool?
    public var mlpBias: Bool?
    public var torchDtype: String?
    public var dtype: String?

    enum CodingKeys: String, CodingKey {
        case architectures
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case vocabSize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings"
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case hiddenAct = "hidden_act"
        case attentionBias = "attention_bias"
        case mlpBias = "mlp_bias"
        case torchDtype = "torch_dtype"
        case dtype
    }

    public init(hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int? = nil, headDim: Int? = nil, rmsNormEps: Double = 1e-5,
                ropeTheta: Double = 10000, vocabSize: Int, maxPositionEmbeddings: Int = 4096,
                tieWordEmbeddings: Bool = false, torchDtype: String = "float32") {
        architectures = ["LlamaForCausalLM"]
        modelType = "llama"
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads ?? numAttentionHeads
        self.headDim = headDim
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        ropeScaling = nil
        self.vocabSize = vocabSize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        bosTokenId = .one(1)
        eosTokenId = .one(2)
        hiddenAct = "silu"
        attentionBias = false
        mlpBias = false
        self.torchDtype = torchDtype
        dtype = nil
    }

    // Derived values, with Hugging Face's defaults.
    public var kvHeads: Int { numKeyValueHeads ?? numAttentionHeads }
    public var headDimension: Int { headDim ?? hiddenSize / numAttentionHeads }
    public var qDim: Int { numAttentionHeads * headDimension }
    public var kvDim: Int { kvHeads * headDimension }
    public var theta: Double { ropeTheta ?? 10000 }
    public var tiedEmbeddings: Bool { tieWordEmbeddings ?? false }
    public var storageDtype: String? { dtype ?? torchDtype }
    /// Float32 value of eps, as HF adds it to a float32 tensor.
    public var epsF32: Float { Float(rmsNormEps) }

    public static func load(path: String) throws -> LlamaConfig {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ConfigError(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        let config: LlamaConfig
        do { config = try JSONDecoder().decode(LlamaConfig.self, from: data) } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError(file: path, key: key.stringValue, reason: "required key is missing")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ConfigError(file: path, key: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                              reason: "has the wrong type (\(ctx.debugDescription))")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw ConfigError(file: path, key: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                              reason: "is null")
        } catch {
            throw ConfigError(file: path, reason: "not a valid config.json: \(error.localizedDescription)")
        }
        try config.validate(file: path)
        return config
    }

    /// Refuses settings the forward pass does not implement, naming the key.
    public func validate(file: String) throws {
        func refuse(_ key: String, _ reason: String) -> ConfigError { ConfigError(file: file, key: key, reason: reason) }
        if let mt = modelType, mt != "llama" {
            throw refuse("model_type", "'\(mt)' is not supported: only LLaMA-architecture models ('llama') are")
        }
        if let archs = architectures, !archs.isEmpty,
           !archs.contains(where: { $0 == "LlamaForCausalLM" || $0 == "LlamaModel" }) {
            throw refuse("architectures", "\(archs) is not supported: expected LlamaForCausalLM")
        }
        if let rs = ropeScaling, rs != .null {
            var isDefault = false
            if case .object(let o) = rs {
                let kind = o["rope_type"] ?? o["type"]
                isDefault = kind == .string("default") && o.keys.allSatisfy { ["rope_type", "type", "rope_theta"].contains($0) }
            }
            if !isDefault { throw refuse("rope_scaling", "rope scaling is not supported (only none / default); got \(rs)") }
        }
        if let act = hiddenAct, act != "silu" { throw refuse("hidden_act", "'\(act)' is not supported: expected silu") }
        if attentionBias == true { throw refuse("attention_bias", "attention biases are not supported") }
        if mlpBias == true { throw refuse("mlp_bias", "MLP biases are not supported") }
        for (key, v) in [("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                         ("num_hidden_layers", numHiddenLayers), ("num_attention_heads", numAttentionHeads),
                         ("num_key_value_heads", kvHeads), ("vocab_size", vocabSize),
                         ("max_position_embeddings", maxPositionEmbeddings), ("head_dim", headDimension)] where v <= 0 {
            throw refuse(key, "must be positive, got \(v)")
        }
        if headDim == nil && hiddenSize % numAttentionHeads != 0 {
            throw refuse("num_attention_heads", "hidden_size \(hiddenSize) is not divisible by \(numAttentionHeads) heads")
        }
        if numAttentionHeads % kvHeads != 0 {
            throw refuse("num_key_value_heads", "\(numAttentionHeads) attention heads are not a multiple of \(kvHeads) key/value heads")
        }
        if headDimension % 2 != 0 { throw refuse("head_dim", "rotary embeddings need an even head dimension, got \(headDimension)") }
        if !(rmsNormEps > 0) || !rmsNormEps.isFinite { throw refuse("rms_norm_eps", "must be a positive number") }
        if !(theta > 0) || !theta.isFinite { throw refuse("rope_theta", "must be a positive number") }
        if let d = storageDtype, !["float32", "float16", "bfloat16"].contains(d) {
            throw refuse(dtype != nil ? "dtype" : "torch_dtype", "'\(d)' is not supported: expected float32, float16 or bfloat16")
        }
    }

    /// A short stable identity of the shapes and numerics (for output metadata).
    public var summary: String {
        "layers=\(numHiddenLayers) d_model=\(hiddenSize) d_ff=\(intermediateSize) heads=\(numAttentionHeads) kv_heads=\(kvHeads) head_dim=\(headDimension) vocab=\(vocabSize) rope_theta=\(theta) eps=\(rmsNormEps) tied=\(tiedEmbeddings)"
    }

    public func jsonData() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }
}
