import Foundation
import Quant

/// A dense row-major f32 matrix [rows, cols], kept alive by `owner` (a mapped file or a FloatBuffer).
public struct Matrix: @unchecked Sendable {
    public let pointer: UnsafePointer<Float>
    public let rows: Int
    public let cols: Int
    let owner: AnyObject

    public init(pointer: UnsafePointer<Float>, rows: Int, cols: Int, owner: AnyObject) {
        self.pointer = pointer; self.rows = rows; self.cols = cols; self.owner = owner
    }

    public init(_ buffer: FloatBuffer, rows: Int, cols: Int) {
        precondition(buffer.count == rows * cols)
        self.init(pointer: UnsafePointer(buffer.pointer), rows: rows, cols: cols, owner: buffer)
    }

    public func row(_ r: Int) -> UnsafePointer<Float> { pointer + r * cols }
}

/// A projection y = x · Wᵀ with W stored [out_features, in_features].
/// (The int8 storage of the Int8 issue is a further case here.)
public enum Linear: @unchecked Sendable {
    case f32(Matrix)

    public var outFeatures: Int { switch self { case .f32(let m): return m.rows } }
    public var inFeatures: Int { switch self { case .f32(let m): return m.cols } }

    /// y[rows, out] = x[rows, in] · Wᵀ (+ y when `accumulate`).
    @inline(__always)
    public func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int,
                      ldx: Int? = nil, ldy: Int? = nil, accumulate: Bool = false) {
        switch self {
        case .f32(let w):
            BLAS.matmulTransposedB(x, w.pointer, y, m: rows, n: w.rows, k: w.cols, ldx: ldx, ldy: ldy,
                                   accumulate: accumulate)
        }
    }
}

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
}

/// All weights of a LLaMA model, in f32 (upcast exactly from the stored type).
public struct LlamaWeights: Sendable {
    public var config: LlamaConfig
    public var embedding: Matrix      // [vocab, d]
    public var layers: [LayerWeights]
    public var finalNorm: [Float]     // [d]
    /// [vocab, d]; nil when the head was not loaded (no logits requested). Tied: the embedding.
    public var head: Linear?
    /// Rotary layout of the stored Q/K projections.
    public var ropeLayout: RopeLayout
}
