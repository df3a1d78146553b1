import Foundation
import Quant
import Formats

extension LlamaWeights {
    /// The checkpoint's identity, from its weights: sha256 over the configuration's sizes (float parameters
    /// as float32 bits, as both loaders read them) and the tensors every storage type keeps exactly — the RMS
    /// norm weights in f32 (an exact upcast from BF16/F16; F32 in every GGUF), in layer order, then the final
    /// norm. Two checkpoints with different weights differ (a fine-tune or another seed moves the norms);
    /// the same checkpoint as an HF f32/bf16 directory and as the Q8_0 GGUF made from it agree.
    /// `weights-sha256:<64 hex>`.
    public func fingerprint() -> String {
        Self.fingerprint(config: config, norms: layers.map { ($0.attnNorm, $0.mlpNorm) }, finalNorm: finalNorm)
    }

    static func fingerprint(config c: LlamaConfig, norms: [([Float], [Float])], finalNorm: [Float]) -> String {
        var h = SHA256()
        let head = "llamaprobe-weights-fingerprint-v1 layers=\(c.numHiddenLayers) d_model=\(c.hiddenSize) d_ff=\(c.intermediateSize) "
            + "heads=\(c.numAttentionHeads) kv_heads=\(c.kvHeads) head_dim=\(c.headDimension) vocab=\(c.vocabSize) "
            + "theta=\(Float(c.theta).bitPattern) eps=\(c.epsF32.bitPattern) "
            + "rope_linear=\(c.linearRopeFactor.map { String(Float($0).bitPattern) } ?? "none") tied=\(c.tiedEmbeddings)\n"
        h.update(Array(head.utf8))
        func add(_ v: [Float]) { v.withUnsafeBytes { h.update($0) } }
        for (a, m) in norms { add(a); add(m) }
        add(finalNorm)
        return "weights-sha256:" + h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// How the projections are stored ("Q8_0", "F32", "F16", or a "+"-joined mix).
    public var projectionStorage: String {
        var seen: [String] = []
        for l in layers {
            for w in [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down] where !seen.contains(w.storage) { seen.append(w.storage) }
        }
        return seen.joined(separator: "+")
    }
}

extension HFCheckpoint {
    /// The fingerprint of this checkpoint (`LlamaWeights.fingerprint`), reading only the norm weights.
    public func fingerprint() throws -> String {
        func vector(_ name: String) throws -> [Float] {
            let (file, info) = try tensor(name)
            guard let q = info.dtype.quantType, info.shape.count == 1 else {
                throw SafeTensorsError(file: file.path, tensor: name, reason: "dtype \(info.dtype.rawValue) shape \(info.shape) is not a float vector")
            }
            var out = [Float](repeating: 0, count: info.shape[0])
            out.withUnsafeMutableBufferPointer { q.toFloat(file.data(info), $0.baseAddress!, info.shape[0]) }
            return out
        }
        let norms = try (0..<config.numHiddenLayers).map { l in
            (try vector("model.layers.\(l).input_layernorm.weight"), try vector("model.layers.\(l).post_attention_layernorm.weight"))
        }
        return LlamaWeights.fingerprint(config: config, norms: norms, finalNorm: try vector("model.norm.weight"))
    }
}

extension GGUFModel {
    /// The fingerprint of a GGUF model (`LlamaWeights.fingerprint`), reading only the norm weights.
    public static func fingerprint(_ g: GGUFFile, config c: LlamaConfig) throws -> String {
        func vector(_ name: String) throws -> [Float] {
            let t = try g.info(name)
            let q = try g.quantType(t)
            guard t.shape == [c.hiddenSize] else {
                throw GGUFError(file: g.path, tensor: name, reason: "shape \(t.shape), expected [\(c.hiddenSize)]")
            }
            var out = [Float](repeating: 0, count: c.hiddenSize)
            out.withUnsafeMutableBufferPointer { q.toFloat(g.data(t), $0.baseAddress!, c.hiddenSize) }
            return out
        }
        let norms = try (0..<c.numHiddenLayers).map { l in
            (try vector("blk.\(l).attn_norm.weight"), try vector("blk.\(l).ffn_norm.weight"))
        }
        return LlamaWeights.fingerprint(config: c, norms: norms, finalNorm: try vector("output_norm.weight"))
    }
}
