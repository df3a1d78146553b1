import Foundation
import Quant
import Formats

/// LLaMA models in GGUF files (llama.cpp's format): configuration from the `llama.*` metadata, weights
/// from the `token_embd` / `blk.N.*` / `output*` tensors. llama.cpp's converter stores Q and K in the
/// interleaved rotary layout (Meta's original), so these weights run with `RopeLayout.interleaved`.
public enum GGUFModel {
    /// The GGUF metadata key of each config.json key (errors about a GGUF file name the GGUF key).
    public static let keyNames: [String: String] = [
        "hidden_size": "llama.embedding_length", "intermediate_size": "llama.feed_forward_length",
        "num_hidden_layers": "llama.block_count", "num_attention_heads": "llama.attention.head_count",
        "num_key_value_heads": "llama.attention.head_count_kv", "head_dim": "llama.attention.key_length",
        "rms_norm_eps": "llama.attention.layer_norm_rms_epsilon", "rope_theta": "llama.rope.freq_base",
        "vocab_size": "token_embd.weight rows", "max_position_embeddings": "llama.context_length",
        "rope_scaling": "llama.rope.scaling.factor",
    ]

    public static func config(_ g: GGUFFile) throws -> LlamaConfig {
        func fail(_ key: String, _ reason: String) -> GGUFError { GGUFError(file: g.path, key: key, reason: reason) }
        let arch = try g.string("general.architecture")
        guard arch == "llama" else {
            throw fail("general.architecture", "'\(arch)' is not supported: only LLaMA-architecture models ('llama') are")
        }
        let embd = try g.info("token_embd.weight")
        guard embd.shape.count == 2 else {
            throw GGUFError(file: g.path, tensor: embd.name, reason: "expected a matrix, found shape \(embd.shape)")
        }
        let d = try g.uint("llama.embedding_length")
        let heads = try g.uint("llama.attention.head_count")
        // Before anything is derived from it (the head dimension d / heads).
        guard heads > 0 else { throw fail("llama.attention.head_count", "must be positive, got 0") }
        let headDim = try g.uintIfPresent("llama.attention.key_length") ?? d / heads
        let layers = try g.uint("llama.block_count")
        // Before the list of expected tensors is built: a crafted count must not make it grow without bound.
        let present = layersPresent(g.tensorNames, prefix: "blk.")
        guard layers <= present else {
            throw fail("llama.block_count", "is \(layers) but the file holds tensors of only \(present) layers (blk.N.*)")
        }
        let eps = try g.double("llama.attention.layer_norm_rms_epsilon")
        var c = LlamaConfig(
            hiddenSize: d, intermediateSize: try g.uint("llama.feed_forward_length"),
            numHiddenLayers: layers, numAttentionHeads: heads,
            numKeyValueHeads: try g.uintIfPresent("llama.attention.head_count_kv") ?? heads,
            headDim: headDim == d / heads ? nil : headDim,
            rmsNormEps: eps, ropeTheta: try g.doubleIfPresent("llama.rope.freq_base") ?? 10000,
            vocabSize: embd.shape[0], maxPositionEmbeddings: try g.uint("llama.context_length"),
            tieWordEmbeddings: g.tensors["output.weight"] == nil)
        c.torchDtype = nil
        c.ropeScaling = try ropeScaling(g)
        do { try c.validate(file: g.path, name: { keyNames[$0] ?? $0 }) } catch let e as ConfigError {
            throw GGUFError(file: g.path, key: e.key, reason: e.reason)
        }
        // After the sizes are known to be valid (a bad head count is not blamed on this key).
        if let rot = try g.uintIfPresent("llama.rope.dimension_count"), rot != c.headDimension {
            throw fail("llama.rope.dimension_count", "partial rotary embeddings (\(rot) of \(c.headDimension) dimensions) are not supported")
        }
        if let v = try g.uintIfPresent("llama.attention.value_length"), v != c.headDimension {
            throw fail("llama.attention.value_length", "\(v) differs from the key head size \(c.headDimension): not supported")
        }
        return c
    }

    /// Rope scaling as llama.cpp reads it: `llama.rope.scaling.type` defaults to linear; the factor is
    /// `llama.rope.scaling.factor`, else the old `llama.rope.scale_linear` (0 or absent: no scaling); type
    /// "none" never scales. Linear scaling is computed; other types are refused by name.
    static func ropeScaling(_ g: GGUFFile) throws -> JSONValue? {
        let typeKey = "llama.rope.scaling.type"
        var factorKey = "llama.rope.scaling.factor"
        var factor = try g.doubleIfPresent(factorKey)
        if factor == nil {
            factorKey = "llama.rope.scale_linear"
            factor = try g.doubleIfPresent(factorKey)
        }
        let kind = try g.stringIfPresent(typeKey) ?? "linear"
        switch kind {
        case "none": return nil
        case "linear":
            guard let f = factor, f != 0 else { return nil }
            guard f > 0, f.isFinite, Float(f) > 0, Float(f).isFinite else {
                throw GGUFError(file: g.path, key: factorKey, reason: "linear rope scaling factor must be a positive number, got \(f)")
            }
            return LlamaConfig.linearRopeScaling(f)
        default:
            throw GGUFError(file: g.path, key: typeKey, reason: "rope scaling type '\(kind)' is not supported (only 'linear' and 'none')")
        }
    }

    /// Names and shapes the config implies (GGUF names, row-major shapes).
    public static func expectedTensors(_ c: LlamaConfig) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize, f = c.intermediateSize
        var out: [(String, [Int])] = [("token_embd.weight", [c.vocabSize, d])]
        for l in 0..<c.numHiddenLayers {
            let p = "blk.\(l)."
            out += [(p + "attn_norm.weight", [d]), (p + "attn_q.weight", [c.qDim, d]), (p + "attn_k.weight", [c.kvDim, d]),
                    (p + "attn_v.weight", [c.kvDim, d]), (p + "attn_output.weight", [d, c.qDim]),
                    (p + "ffn_norm.weight", [d]), (p + "ffn_gate.weight", [f, d]), (p + "ffn_up.weight", [f, d]),
                    (p + "ffn_down.weight", [d, f])]
        }
        out.append(("output_norm.weight", [d]))
        if !c.tiedEmbeddings { out.append(("output.weight", [c.vocabSize, d])) }
        return out
    }

    /// Loads the weights: Q8_0 projections are repacked for the kernels (and their mapped pages released),
    /// F32/F16/BF16 ones converted to f32; the embedding table stays mapped in its stored type.
    public static func loadWeights(_ g: GGUFFile, config c: LlamaConfig, includeHead: Bool, pool: ThreadPool) throws -> LlamaWeights {
        for (name, shape) in expectedTensors(c) {
            guard let t = g.tensors[name] else {
                throw GGUFError(file: g.path, tensor: name, reason: "missing (expected \(shape) from the llama.* metadata)")
            }
            guard t.shape == shape else {
                throw GGUFError(file: g.path, tensor: name, reason: "shape \(t.shape) does not match \(shape) implied by the llama.* metadata")
            }
            _ = try g.quantType(t)
        }
        func tensor(_ name: String) throws -> (GGUFTensorInfo, QuantType) {
            let t = try g.info(name)
            return (t, try g.quantType(t))
        }
        func floats(_ name: String) throws -> FloatBuffer {
            let (t, q) = try tensor(name)
            let buf = FloatBuffer(count: t.elementCount)
            let cols = t.rowLength, rowBytes = q.byteCount(elements: cols)
            pool.parallelRanges(t.rowCount, chunksPerThread: 4) { r in
                q.toFloat(g.data(t) + r.lowerBound * rowBytes, buf.pointer + r.lowerBound * cols, r.count * cols)
            }
            try checkFinite(buf.pointer, count: t.elementCount, file: g.path, tensor: name, pool: pool)
            return buf
        }
        func linear(_ name: String) throws -> Linear {
            let (t, q) = try tensor(name)
            let rows = t.rowCount, cols = t.rowLength
            guard q.id == .q8_0 else { return .f32(Matrix(try floats(name), rows: rows, cols: cols)) }
            try checkQ8Scales(g.data(t), blocks: t.elementCount / Q8_0.blockSize, file: g.path, tensor: name)
            let packed = PackedQ8Matrix(q8_0: g.data(t), rows: rows, cols: cols, pool: pool)
            g.file.release(offset: t.fileOffset, count: t.byteCount)
            return .q8_0(packed)
        }
        func vector(_ name: String) throws -> [Float] { (try floats(name)).array }

        let (embd, embdType) = try tensor("token_embd.weight")
        if embdType.id == .q8_0 {
            try checkQ8Scales(g.data(embd), blocks: embd.elementCount / Q8_0.blockSize, file: g.path, tensor: embd.name)
        }
        let embedding = EmbeddingTable(data: g.data(embd), type: embdType, rows: c.vocabSize, cols: c.hiddenSize, owner: g)
        var layers: [LayerWeights] = []
        for l in 0..<c.numHiddenLayers {
            let p = "blk.\(l)."
            layers.append(LayerWeights(
                attnNorm: try vector(p + "attn_norm.weight"),
                wq: try linear(p + "attn_q.weight"), wk: try linear(p + "attn_k.weight"),
                wv: try linear(p + "attn_v.weight"), wo: try linear(p + "attn_output.weight"),
                mlpNorm: try vector(p + "ffn_norm.weight"),
                gate: try linear(p + "ffn_gate.weight"), up: try linear(p + "ffn_up.weight"),
                down: try linear(p + "ffn_down.weight")))
        }
        var head: Linear? = nil
        if includeHead { head = try linear(c.tiedEmbeddings ? "token_embd.weight" : "output.weight") }
        return LlamaWeights(config: c, embedding: embedding, layers: layers, finalNorm: try vector("output_norm.weight"),
                            head: head, ropeLayout: .interleaved)
    }

    /// A Q8_0 tensor's block scales must be finite (a NaN scale would poison every product).
    static func checkQ8Scales(_ data: UnsafeRawPointer, blocks: Int, file: String, tensor: String) throws {
        for b in 0..<blocks {
            let d = f16ToFloat(data.loadUnaligned(fromByteOffset: b * Q8_0.blockBytes, as: UInt16.self))
            if !d.isFinite {
                throw GGUFError(file: file, tensor: tensor, reason: "block \(b) has a non-finite scale (\(d)); refusing to compute with it")
            }
        }
    }
}
