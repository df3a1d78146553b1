import Foundation
import Formats

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
    public var all: [Int] {
        switch self {
        case .one(let v): return [v]
        case .many(let v): return v
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
    /// Mistral: the attention window (null: none). Qwen2: applies only with `use_sliding_window: true`.
    public var slidingWindow: Int?
    public var useSlidingWindow: Bool?
    /// Qwen2: layers from this index on are windowed (when `layer_types` is absent; HF's default 28).
    public var maxWindowLayers: Int?
    /// Qwen2: "full_attention" or "sliding_attention" per layer (transformers ≥ 4.53 writes it).
    public var layerTypes: [String]?

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
        case slidingWindow = "sliding_window"
        case useSlidingWindow = "use_sliding_window"
        case maxWindowLayers = "max_window_layers"
        case layerTypes = "layer_types"
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
        slidingWindow = nil
        useSlidingWindow = nil
        maxWindowLayers = nil
        layerTypes = nil
    }

    /// The model families this implementation computes: config.json's `model_type` and the `architectures`
    /// names Hugging Face gives them.
    public static let families: [(modelType: String, architectures: [String])] = [
        ("llama", ["LlamaForCausalLM", "LlamaModel"]),
        ("mistral", ["MistralForCausalLM", "MistralModel"]),
        ("qwen2", ["Qwen2ForCausalLM", "Qwen2Model"]),
    ]

    /// The family (`model_type`; LLaMA when the key is absent).
    public var family: String { modelType ?? "llama" }

    /// Qwen2 adds a bias to the q, k and v projections (before RoPE); LLaMA and Mistral have none.
    public var hasQKVBias: Bool { family == "qwen2" }

    /// The attention window of layer `l` as Hugging Face applies it (query i attends to keys j with
    /// i - window < j ≤ i): Mistral's `sliding_window` on every layer (null: none); Qwen2's only with
    /// `use_sliding_window: true`, and then only on the layers `layer_types` marks "sliding_attention"
    /// (without that key: layers from `max_window_layers` on). Qwen2.5 configs carry a window next to
    /// `use_sliding_window: false`, which HF ignores. LLaMA has none.
    public func attentionWindow(layer l: Int) -> Int? {
        switch family {
        case "mistral": return slidingWindow
        case "qwen2":
            guard useSlidingWindow == true, let w = slidingWindow else { return nil }
            if let types = layerTypes { return l < types.count && types[l] == "sliding_attention" ? w : nil }
            return l >= (maxWindowLayers ?? 28) ? w : nil
        default: return nil
        }
    }

    /// The window when every layer has the same one (what a GGUF file records); nil when no layer is windowed.
    public var attentionWindow: Int? {
        (0..<numHiddenLayers).lazy.compactMap { self.attentionWindow(layer: $0) }.first
    }

    /// Whether some layers are windowed and others not (Qwen2 with `max_window_layers` inside the model).
    public var hasMixedWindows: Bool {
        guard attentionWindow != nil else { return false }
        return (0..<numHiddenLayers).contains { attentionWindow(layer: $0) == nil }
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
        let data = try Files.readData(path, limit: 16 << 20)
        let config: LlamaConfig
        do { config = try JSONDecoder().decode(LlamaConfig.self, from: data) } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError(file: path, key: key.stringValue, reason: "required key is missing")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw badValue(path, data, ctx)
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw ConfigError(file: path, key: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                              reason: "is null")
        } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
            throw badValue(path, data, ctx)   // e.g. 128.5 or 1e30 where an integer is expected
        } catch {
            // Foundation's decoder reports a number that does not fit the type (128.5 or 1e30 for an integer)
            // without the key: find it.
            if let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
                for (key, value) in obj.sorted(by: { $0.key < $1.key }) where expectedType(key) == "an integer" {
                    if let n = value as? NSNumber, Int(exactly: n.doubleValue) == nil || "\(n)".contains(".") {
                        throw ConfigError(file: path, key: key, reason: "must be an integer, got \(n)")
                    }
                }
            }
            throw ConfigError(file: path, reason: "not a valid config.json: \(error.localizedDescription)")
        }
        try config.validate(file: path)
        return config
    }

    /// What a key of config.json must hold (for messages about values of the wrong type).
    static func expectedType(_ key: String) -> String {
        switch key {
        case "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "vocab_size", "max_position_embeddings", "sliding_window", "max_window_layers": return "an integer"
        case "rms_norm_eps", "rope_theta": return "a number"
        case "tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window": return "true or false"
        case "bos_token_id", "eos_token_id": return "an integer or a list of integers"
        case "architectures", "layer_types": return "a list of strings"
        case "rope_scaling": return "an object or null"
        default: return "a string"
        }
    }

    /// "'KEY': must be an integer, got 128.5": the key, what it must hold and the value found.
    static func badValue(_ path: String, _ data: Data, _ ctx: DecodingError.Context) -> ConfigError {
        let key = ctx.codingPath.map(\.stringValue).joined(separator: ".")
        let top = ctx.codingPath.first?.stringValue ?? key
        var found = ""
        if let obj = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) as? [String: Any],
           let v = obj[top], let json = try? JSONSerialization.data(withJSONObject: [v], options: [.fragmentsAllowed]) {
            found = ", got " + String(decoding: json.dropFirst().dropLast(), as: UTF8.self).prefix(80)
        }
        return ConfigError(file: path, key: key, reason: "must be \(expectedType(top))\(found)")
    }

    /// Upper bounds of the sizes in a config (far above any released LLaMA model; a crafted file cannot make
    /// the loader build tensor lists or buffers of absurd sizes). Checked before anything is derived from them.
    public static let limits: [(key: String, max: Int)] = [
        ("hidden_size", 1 << 20), ("intermediate_size", 1 << 22), ("num_hidden_layers", 1 << 16),
        ("num_attention_heads", 1 << 14), ("num_key_value_heads", 1 << 14), ("head_dim", 1 << 14),
        ("vocab_size", 1 << 24), ("max_position_embeddings", Int(UInt32.max)), ("sliding_window", Int(UInt32.max)),
    ]

    /// The factor of linear rope scaling (HF's `rope_scaling: {"rope_type": "linear", "factor": F}`, llama.cpp's
    /// `rope.scaling.factor`): positions are divided by it (inv_freq / F). nil when there is no scaling.
    /// Only meaningful after `validate` (which refuses every other kind of scaling).
    public var linearRopeFactor: Double? {
        guard case .object(let o)? = ropeScaling, Self.ropeScalingKind(o) == "linear",
              case .number(let f)? = o["factor"], f != 1 else { return nil }
        return f
    }

    /// The parameters of Llama-3.1's rope scaling (HF's `rope_type: "llama3"`). Only meaningful after `validate`.
    public struct Llama3Rope: Equatable, Sendable {
        public var factor: Double
        public var lowFreqFactor: Double
        public var highFreqFactor: Double
        public var originalMaxPositionEmbeddings: Double
        public init(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositionEmbeddings: Double) {
            self.factor = factor; self.lowFreqFactor = lowFreqFactor; self.highFreqFactor = highFreqFactor
            self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
        }
    }

    static let llama3Keys = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]

    /// nil unless `rope_scaling` is of type llama3 with all four numbers.
    public var llama3Rope: Llama3Rope? {
        guard case .object(let o)? = ropeScaling, Self.ropeScalingKind(o) == "llama3" else { return nil }
        let v = Self.llama3Keys.map { k -> Double? in if case .number(let n)? = o[k] { return n }; return nil }
        guard let f = v[0], let lo = v[1], let hi = v[2], let old = v[3] else { return nil }
        return Llama3Rope(factor: f, lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositionEmbeddings: old)
    }

    /// HF's inv_freq in float32: 1 / theta^(2i/head_dim), divided by the linear factor, or rescaled per
    /// frequency as `_compute_llama3_parameters` does (wavelengths above original/low_freq_factor divided by
    /// the factor, below original/high_freq_factor kept, smoothed in between), in the same float32 operations.
    public var ropeInverseFrequencies: [Float] {
        let half = headDimension / 2
        let theta = Float(self.theta), dim = Float(headDimension)
        let base = (0..<half).map { i in 1 / powf(theta, Float(2 * i) / dim) }
        if let factor = linearRopeFactor {
            let f = Float(factor)
            return base.map { $0 / f }
        }
        guard let r = llama3Rope else { return base }
        let factor = Float(r.factor), lo = Float(r.lowFreqFactor)
        let old = Float(r.originalMaxPositionEmbeddings)
        let lowWavelen = Float(r.originalMaxPositionEmbeddings / r.lowFreqFactor)
        let highWavelen = Float(r.originalMaxPositionEmbeddings / r.highFreqFactor)
        let span = Float(r.highFreqFactor - r.lowFreqFactor)
        let twoPi = Float(2 * Double.pi)
        return base.map { f in
            let wavelen = (1 / f) * twoPi
            if wavelen > lowWavelen { return f / factor }
            if wavelen < highWavelen { return f }
            let smooth = ((1 / wavelen) * old - lo) / span
            return (1 - smooth) * f / factor + smooth * f
        }
    }

    /// Llama-3.1's rope scaling as llama.cpp stores it (`rope_freqs.weight`, [head_dim/2]): frequency i is
    /// divided by factor i (1, the factor, or 1/((1-s)/factor + s) in the smoothed band), computed as
    /// convert_hf_to_gguf.py does. nil without llama3 scaling.
    public var llama3RopeFactors: [Float]? {
        guard let r = llama3Rope else { return nil }
        let half = headDimension / 2
        let theta = Float(self.theta), dim = Float(headDimension)
        let lowWavelen = r.originalMaxPositionEmbeddings / r.lowFreqFactor
        let highWavelen = r.originalMaxPositionEmbeddings / r.highFreqFactor
        return (0..<half).map { i in
            let freq = Double(1 / powf(theta, Float(2 * i) / dim))
            let wavelen = 2 * Double.pi / freq
            if wavelen < highWavelen { return 1 }
            if wavelen > lowWavelen { return Float(r.factor) }
            let smooth = (r.originalMaxPositionEmbeddings / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor)
            return Float(1 / ((1 - smooth) / r.factor + smooth))
        }
    }

    static func ropeScalingKind(_ o: [String: JSONValue]) -> String? {
        if case .string(let s)? = o["rope_type"] ?? o["type"] { return s }
        return nil
    }

    /// `rope_scaling` for linear scaling by `factor` (nil for a factor of 1).
    public static func linearRopeScaling(_ factor: Double) -> JSONValue? {
        factor == 1 ? nil : .object(["rope_type": .string("linear"), "factor": .number(factor)])
    }

    /// Refuses settings the forward pass does not implement and values out of range, naming the key.
    /// `name` maps config.json's key names to the caller's (GGUF metadata keys for a GGUF file).
    public func validate(file: String, name: (String) -> String = { $0 }) throws {
        func refuse(_ key: String, _ reason: String) -> ConfigError { ConfigError(file: file, key: name(key), reason: reason) }
        let known = Self.families.map(\.modelType)
        guard let fam = Self.families.first(where: { $0.modelType == family }) else {
            throw refuse("model_type", "'\(family)' is not supported: the supported families are \(known.map { "'\($0)'" }.joined(separator: ", "))")
        }
        if let archs = architectures, !archs.isEmpty, !archs.contains(where: fam.architectures.contains) {
            throw refuse("architectures", "\(archs) is not supported for model_type '\(family)': expected \(fam.architectures[0])")
        }
        if let act = hiddenAct, act != "silu" { throw refuse("hidden_act", "'\(act)' is not supported: expected silu") }
        // Hugging Face's Qwen2 reads neither key (its q/k/v always have biases, o and the MLP never).
        if attentionBias == true && family != "qwen2" {
            throw refuse("attention_bias", "true is not supported for model_type '\(family)' (biases on q/k/v and o): only Qwen2's q/k/v biases are")
        }
        if mlpBias == true && family != "qwen2" { throw refuse("mlp_bias", "MLP biases are not supported") }
        // Sizes first, before anything divides by or multiplies them.
        let given: [String: Int?] = [
            "hidden_size": hiddenSize, "intermediate_size": intermediateSize, "num_hidden_layers": numHiddenLayers,
            "num_attention_heads": numAttentionHeads, "num_key_value_heads": numKeyValueHeads, "head_dim": headDim,
            "vocab_size": vocabSize, "max_position_embeddings": maxPositionEmbeddings,
            "sliding_window": family == "mistral" || (family == "qwen2" && useSlidingWindow == true) ? slidingWindow : nil,
        ]
        for (key, limit) in Self.limits {
            guard let v = given[key] ?? nil else { continue }
            if v <= 0 { throw refuse(key, "must be positive, got \(v)") }
            if v > limit { throw refuse(key, "\(v) is absurd: at most \(limit) is accepted") }
        }
        if let m = maxWindowLayers, !(0...(1 << 16)).contains(m) {
            throw refuse("max_window_layers", "must be a layer count in 0...65536, got \(m)")
        }
        if let types = layerTypes {
            guard types.count == numHiddenLayers else {
                throw refuse("layer_types", "has \(types.count) entries for \(numHiddenLayers) layers")
            }
            if let bad = types.first(where: { $0 != "full_attention" && $0 != "sliding_attention" }) {
                throw refuse("layer_types", "'\(bad.prefix(40))' is not 'full_attention' or 'sliding_attention'")
            }
        }
        if headDim == nil && hiddenSize % numAttentionHeads != 0 {
            throw refuse("num_attention_heads", "\(name("hidden_size")) \(hiddenSize) is not divisible by \(numAttentionHeads) heads")
        }
        if kvHeads > numAttentionHeads || numAttentionHeads % kvHeads != 0 {
            throw refuse("num_key_value_heads", "\(numAttentionHeads) attention heads are not a multiple of \(kvHeads) key/value heads")
        }
        if headDimension % 2 != 0 { throw refuse("head_dim", "rotary embeddings need an even head dimension, got \(headDimension)") }
        // The forward pass computes in float32: eps and theta must be positive and finite as float32 too
        // (an eps below 1e-45 would round to 0).
        func positiveFloat(_ key: String, _ v: Double) throws {
            guard v > 0, v.isFinite else { throw refuse(key, "must be a positive number, got \(v)") }
            let f = Float(v)
            guard f > 0, f.isFinite else { throw refuse(key, "\(v) cannot be represented as a float32 (it becomes \(f))") }
        }
        try positiveFloat("rms_norm_eps", rmsNormEps)
        try positiveFloat("rope_theta", theta)
        if let rs = ropeScaling, rs != .null {
            guard case .object(let o) = rs else {
                throw refuse("rope_scaling", "must be an object such as {\"rope_type\": \"linear\", \"factor\": 2.0} or null")
            }
            switch Self.ropeScalingKind(o) {
            case "default"?:
                if let extra = o.keys.sorted().first(where: { !["rope_type", "type", "rope_theta"].contains($0) }) {
                    throw refuse("rope_scaling", "'\(extra)' is not supported with the default rope type")
                }
            case "linear"?:
                guard case .number(let f)? = o["factor"] else {
                    throw refuse("rope_scaling", "linear scaling needs a numeric 'factor'")
                }
                try positiveFloat("rope_scaling", f)
            case "llama3"?:
                for key in Self.llama3Keys {
                    guard case .number(let v)? = o[key] else {
                        throw refuse("rope_scaling", "llama3 scaling needs a numeric '\(key)'")
                    }
                    try positiveFloat("rope_scaling", v)
                }
                if let r = llama3Rope, !(r.highFreqFactor > r.lowFreqFactor) {
                    throw refuse("rope_scaling", "llama3 scaling needs 'high_freq_factor' (\(r.highFreqFactor)) greater than 'low_freq_factor' (\(r.lowFreqFactor))")
                }
            case let kind?:
                throw refuse("rope_scaling", "rope scaling type '\(kind)' is not supported (only 'linear', 'llama3' and 'default')")
            case nil:
                throw refuse("rope_scaling", "has no 'rope_type' (or 'type'): expected 'linear', 'llama3' or 'default'")
            }
        }
        if let d = storageDtype, !["float32", "float16", "bfloat16"].contains(d) {
            throw refuse(dtype != nil ? "dtype" : "torch_dtype", "'\(d)' is not supported: expected float32, float16 or bfloat16")
        }
    }

    /// " window=W", or " window=W(layers a,b,…)" when only some layers have it; "" without a window.
    var windowSummary: String {
        guard let w = attentionWindow else { return "" }
        guard hasMixedWindows else { return " window=\(w)" }
        return " window=\(w)(layers \((0..<numHiddenLayers).filter { attentionWindow(layer: $0) != nil }.map(String.init).joined(separator: ",")))"
    }

    /// A short stable identity of the shapes and numerics (for output metadata).
    public var summary: String {
        "family=\(family) layers=\(numHiddenLayers) d_model=\(hiddenSize) d_ff=\(intermediateSize) heads=\(numAttentionHeads) kv_heads=\(kvHeads) head_dim=\(headDimension) vocab=\(vocabSize) rope_theta=\(theta)\(linearRopeFactor.map { " rope_linear=\($0)" } ?? "")\(llama3Rope.map { " rope_llama3=\($0.factor),\($0.lowFreqFactor),\($0.highFreqFactor),\($0.originalMaxPositionEmbeddings)" } ?? "")\(hasQKVBias ? " qkv_bias" : "")\(windowSummary) eps=\(rmsNormEps) tied=\(tiedEmbeddings)"
    }

    public func jsonData() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }
}
