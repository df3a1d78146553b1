import Foundation
import Quant
import Formats

/// How Q/K rows pair up for rotary embeddings inside each head.
public enum RopeLayout: String, Sendable {
    /// Hugging Face: element i pairs with i + head_dim/2 (`rotate_half`).
    case rotateHalf = "rotate-half"
    /// Meta's original and GGUF: element 2i pairs with 2i + 1.
    case interleaved
}

/// Weights of one decoder block. Shapes: d = hidden, q = heads·head_dim, kv = kv_heads·head_dim, f = ff.
public struct LayerWeights: Sendable {
    public var attnNorm: [Float]  // [d]   input_layernorm
    public var wq: Linear         // [q, d]
    public var wk: Linear         // [kv, d]
    public var wv: Linear         // [kv, d]
    public var wo: Linear         // [d, q]
    public var mlpNorm: [Float]   // [d]   post_attention_layernorm
    public var gate: Linear       // [f, d]
    public var up: Linear         // [f, d]
    public var down: Linear       // [d, f]
    /// Qwen2's q/k/v projection biases ([q], [kv], [kv]), added after the projection, before RoPE; nil for
    /// LLaMA and Mistral.
    public var qBias: [Float]? = nil
    public var kBias: [Float]? = nil
    public var vBias: [Float]? = nil

    /// The seven projections in the order of the block (q, k, v, o, gate, up, down).
    public var projections: [Linear] { [wq, wk, wv, wo, gate, up, down] }
}

/// One per-layer tensor of the schema: its Hugging Face name (after `model.layers.L.`), its GGUF name (after
/// `blk.L.`), its shape from the config, and whether the config has it (Qwen2's biases). Loading, quantizing,
/// synthesis and the expected-tensor checks all iterate `LayerTensor.all`: a new tensor is one new row (and
/// its field in `LayerWeights.assemble`).
public struct LayerTensor: Sendable {
    public enum Kind: Sendable { case norm, projection, bias }
    public let hf: String
    public let gguf: String
    public let kind: Kind
    let shapeOf: @Sendable (LlamaConfig) -> [Int]
    let presentIf: @Sendable (LlamaConfig) -> Bool

    public func shape(_ c: LlamaConfig) -> [Int] { shapeOf(c) }
    public func present(_ c: LlamaConfig) -> Bool { presentIf(c) }

    init(_ hf: String, _ gguf: String, _ kind: Kind, present: @escaping @Sendable (LlamaConfig) -> Bool = { _ in true },
         _ shape: @escaping @Sendable (LlamaConfig) -> [Int]) {
        self.hf = hf; self.gguf = gguf; self.kind = kind; shapeOf = shape; presentIf = present
    }

    /// In load order (the order both formats list them in, and quantize writes them in).
    public static let all: [LayerTensor] = [
        LayerTensor("input_layernorm.weight", "attn_norm.weight", .norm) { [$0.hiddenSize] },
        LayerTensor("self_attn.q_proj.weight", "attn_q.weight", .projection) { [$0.qDim, $0.hiddenSize] },
        LayerTensor("self_attn.k_proj.weight", "attn_k.weight", .projection) { [$0.kvDim, $0.hiddenSize] },
        LayerTensor("self_attn.v_proj.weight", "attn_v.weight", .projection) { [$0.kvDim, $0.hiddenSize] },
        LayerTensor("self_attn.q_proj.bias", "attn_q.bias", .bias, present: { $0.hasQKVBias }) { [$0.qDim] },
        LayerTensor("self_attn.k_proj.bias", "attn_k.bias", .bias, present: { $0.hasQKVBias }) { [$0.kvDim] },
        LayerTensor("self_attn.v_proj.bias", "attn_v.bias", .bias, present: { $0.hasQKVBias }) { [$0.kvDim] },
        LayerTensor("self_attn.o_proj.weight", "attn_output.weight", .projection) { [$0.hiddenSize, $0.qDim] },
        LayerTensor("post_attention_layernorm.weight", "ffn_norm.weight", .norm) { [$0.hiddenSize] },
        LayerTensor("mlp.gate_proj.weight", "ffn_gate.weight", .projection) { [$0.intermediateSize, $0.hiddenSize] },
        LayerTensor("mlp.up_proj.weight", "ffn_up.weight", .projection) { [$0.intermediateSize, $0.hiddenSize] },
        LayerTensor("mlp.down_proj.weight", "ffn_down.weight", .projection) { [$0.hiddenSize, $0.intermediateSize] },
    ]

    /// The tensors of layer `l` the config has, as (full name, shape, row): GGUF names or Hugging Face ones.
    public static func layer(_ l: Int, _ c: LlamaConfig, gguf: Bool) -> [(name: String, shape: [Int], tensor: LayerTensor)] {
        all.filter { $0.present(c) }.map { t in
            (gguf ? "blk.\(l).\(t.gguf)" : "model.layers.\(l).\(t.hf)", t.shape(c), t)
        }
    }
}

extension LayerWeights {
    /// One layer from the schema: `vector` reads a norm or bias, `linear` a projection, each by full name.
    static func assemble(layer l: Int, config c: LlamaConfig, gguf: Bool,
                         vector: (String) throws -> [Float], linear: (String) throws -> Linear) rethrows -> LayerWeights {
        var vectors: [String: [Float]] = [:]
        var linears: [String: Linear] = [:]
        for (name, _, t) in LayerTensor.layer(l, c, gguf: gguf) {
            switch t.kind {
            case .norm, .bias: vectors[t.hf] = try vector(name)
            case .projection: linears[t.hf] = try linear(name)
            }
        }
        func lin(_ k: String) -> Linear { linears[k]! }   // every projection row is always present
        var w = LayerWeights(
            attnNorm: vectors["input_layernorm.weight"]!,
            wq: lin("self_attn.q_proj.weight"), wk: lin("self_attn.k_proj.weight"), wv: lin("self_attn.v_proj.weight"),
            wo: lin("self_attn.o_proj.weight"), mlpNorm: vectors["post_attention_layernorm.weight"]!,
            gate: lin("mlp.gate_proj.weight"), up: lin("mlp.up_proj.weight"), down: lin("mlp.down_proj.weight"))
        w.qBias = vectors["self_attn.q_proj.bias"]
        w.kBias = vectors["self_attn.k_proj.bias"]
        w.vBias = vectors["self_attn.v_proj.bias"]
        return w
    }
}

/// The token embedding table [vocab, d] in its stored type (f32, f16, bf16 or Q8_0, possibly still in a
/// mapped file); a row is converted to f32 when a token is looked up.
public struct EmbeddingTable: @unchecked Sendable {
    public let data: UnsafeRawPointer
    public let type: QuantType
    public let rows: Int
    public let cols: Int
    let owner: AnyObject

    public init(data: UnsafeRawPointer, type: QuantType, rows: Int, cols: Int, owner: AnyObject) {
        self.data = data; self.type = type; self.rows = rows; self.cols = cols; self.owner = owner
    }

    public init(_ m: Matrix) {
        self.init(data: UnsafeRawPointer(m.pointer), type: .f32, rows: m.rows, cols: m.cols, owner: m.owner)
    }

    public var rowBytes: Int { type.byteCount(elements: cols) }

    /// dst[0..<cols] = row r in f32.
    public func copyRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        type.toFloat(data + r * rowBytes, dst, cols)
    }

    /// The table as an f32 matrix when it is stored in f32 (for a tied output head).
    public var matrix: Matrix? {
        type.id == .f32 ? Matrix(pointer: data.assumingMemoryBound(to: Float.self), rows: rows, cols: cols, owner: owner) : nil
    }
}

/// All weights of a LLaMA model: norms in f32, projections f32 or Q8_0.
public struct LlamaWeights: Sendable {
    public var config: LlamaConfig
    public var embedding: EmbeddingTable  // [vocab, d]
    public var layers: [LayerWeights]
    public var finalNorm: [Float]     // [d]
    /// [vocab, d]; nil when the head was not loaded (no logits requested). Tied: the embedding.
    public var head: Linear?
    /// Rotary layout of the stored Q/K projections.
    public var ropeLayout: RopeLayout
    /// A GGUF's `rope_freqs.weight` (llama.cpp's form of Llama-3.1's rope scaling): inv_freq[i] is divided
    /// by factor i. nil: the config's rope (`LlamaConfig.ropeInverseFrequencies`).
    public var ropeFreqFactors: [Float]? = nil

    /// The rotary inverse frequencies these weights run with.
    public var ropeInverseFrequencies: [Float] {
        guard let f = ropeFreqFactors else { return config.ropeInverseFrequencies }
        var plain = config
        plain.ropeScaling = nil
        return zip(plain.ropeInverseFrequencies, f).map { $0 / $1 }
    }
}

extension LlamaWeights {
    /// The same model with every projection stored as Q8_0 (rows whose length is not a multiple of 32
    /// stay f32, as llama.cpp keeps them in F16). The embedding and norms stay f32.
    public func quantizedQ8_0(pool: ThreadPool, includeHead: Bool = true) -> LlamaWeights {
        func q(_ l: Linear) -> Linear {
            guard case .f32(let m) = l, m.cols % Q8_0.blockSize == 0 else { return l }
            return .q8_0(PackedQ8Matrix(quantizing: m.pointer, rows: m.rows, cols: m.cols, pool: pool))
        }
        var out = self
        out.layers = layers.map { w in
            var o = w
            o.wq = q(w.wq); o.wk = q(w.wk); o.wv = q(w.wv); o.wo = q(w.wo)
            o.gate = q(w.gate); o.up = q(w.up); o.down = q(w.down)
            return o
        }
        if includeHead, let h = head { out.head = q(h) }
        return out
    }
}
