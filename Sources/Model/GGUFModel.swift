import Foundation
import Quant
import Formats

/// LLaMA models in GGUF files (llama.cpp's format): configuration from the `llama.*` metadata, weights
/// from the `token_embd` / `blk.N.*` / `output*` tensors. llama.cpp's converter stores Q and K in the
/// interleaved rotary layout (Meta's original), so these weights run with `RopeLayout.interleaved`.
public enum GGUFModel {
    /// The GGUF metadata key (without the `ARCH.` prefix) of each config.json key (errors about a GGUF file
    /// name the GGUF key).
    static let keySuffixes: [String: String] = [
        "hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
        "num_hidden_layers": "block_count", "num_attention_heads": "attention.head_count",
        "num_key_value_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
        "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_theta": "rope.freq_base",
        "max_position_embeddings": "context_length", "rope_scaling": "rope.scaling.factor",
        "sliding_window": "attention.sliding_window",
    ]

    /// The GGUF metadata key of a config.json key for `general.architecture` = `arch`.
    public static func keyName(_ key: String, arch: String = "llama") -> String {
        if key == "vocab_size" { return "token_embd.weight rows" }
        return keySuffixes[key].map { "\(arch).\($0)" } ?? key
    }

    /// llama.cpp's architecture of a family: Mistral is written as `llama` (as its converter does), Qwen2 as
    /// `qwen2` (Q/K stored in Hugging Face's rotate-half layout: llama.cpp runs it with NEOX rope).
    public static func architecture(_ c: LlamaConfig) -> String { c.family == "qwen2" ? "qwen2" : "llama" }

    public static func config(_ g: GGUFFile) throws -> LlamaConfig {
        func fail(_ key: String, _ reason: String) -> GGUFError { GGUFError(file: g.path, key: key, reason: reason) }
        let arch = try g.string("general.architecture")
        guard arch == "llama" || arch == "qwen2" else {
            throw fail("general.architecture", "'\(arch)' is not supported: only 'llama' (LLaMA, Mistral) and 'qwen2' are")
        }
        func key(_ k: String) -> String { keyName(k, arch: arch) }

        let embd = try g.info("token_embd.weight")
        guard embd.shape.count == 2 else {
            throw GGUFError(file: g.path, tensor: embd.name, reason: "expected a matrix, found shape \(embd.shape)")
        }
        let d = try g.uint(key("hidden_size"))
        let heads = try g.uint(key("num_attention_heads"))
        // Before anything is derived from it (the head dimension d / heads).
        guard heads > 0 else { throw fail(key("num_attention_heads"), "must be positive, got 0") }
        let headDim = try g.uintIfPresent(key("head_dim")) ?? d / heads
        let layers = try g.uint(key("num_hidden_layers"))
        // Before the list of expected tensors is built: a crafted count must not make it grow without bound.
        let present = layersPresent(g.tensorNames, prefix: "blk.")
        guard layers <= present else {
            throw fail(key("num_hidden_layers"), "is \(layers) but the file holds tensors of only \(present) layers (blk.N.*)")
        }
        let eps = try g.double(key("rms_norm_eps"))
        var c = LlamaConfig(
            hiddenSize: d, intermediateSize: try g.uint(key("intermediate_size")),
            numHiddenLayers: layers, numAttentionHeads: heads,
            numKeyValueHeads: try g.uintIfPresent(key("num_key_value_heads")) ?? heads,
            headDim: headDim == d / heads ? nil : headDim,
            rmsNormEps: eps, ropeTheta: try g.doubleIfPresent(key("rope_theta")) ?? 10000,
            vocabSize: embd.shape[0], maxPositionEmbeddings: try g.uint(key("max_position_embeddings")),
            tieWordEmbeddings: g.tensors["output.weight"] == nil)
        c.torchDtype = nil
        c.ropeScaling = try ropeScaling(g, arch: arch)
        // The attention window (written by `quantize` for Mistral and windowed Qwen2 configs).
        let window = try g.uintIfPresent(key("sliding_window"))
        if arch == "qwen2" {
            c.modelType = "qwen2"
            c.architectures = ["Qwen2ForCausalLM"]
            c.slidingWindow = window
            c.useSlidingWindow = window != nil
            c.maxWindowLayers = window != nil ? 0 : nil   // a window in the file applies to every layer
        } else if let window {
            c.modelType = "mistral"
            c.architectures = ["MistralForCausalLM"]
            c.slidingWindow = window
        }
        do { try c.validate(file: g.path, name: { keyName($0, arch: arch) }) } catch let e as ConfigError {
            throw GGUFError(file: g.path, key: e.key, reason: e.reason)
        }
        // After the sizes are known to be valid (a bad head count is not blamed on this key).
        if let rot = try g.uintIfPresent("\(arch).rope.dimension_count"), rot != c.headDimension {
            throw fail("\(arch).rope.dimension_count", "partial rotary embeddings (\(rot) of \(c.headDimension) dimensions) are not supported")
        }
        if let v = try g.uintIfPresent("\(arch).attention.value_length"), v != c.headDimension {
            throw fail("\(arch).attention.value_length", "\(v) differs from the key head size \(c.headDimension): not supported")
        }
        return c
    }

    /// Rope scaling as llama.cpp reads it: `llama.rope.scaling.type` defaults to linear; the factor is
    /// `llama.rope.scaling.factor`, else the old `llama.rope.scale_linear` (0 or absent: no scaling); type
    /// "none" never scales. Linear scaling is computed; other types are refused by name.
    static func ropeScaling(_ g: GGUFFile, arch: String) throws -> JSONValue? {
        let typeKey = "\(arch).rope.scaling.type"
        var factorKey = "\(arch).rope.scaling.factor"
        var factor = try g.doubleIfPresent(factorKey)
        if factor == nil {
            factorKey = "\(arch).rope.scale_linear"
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
        let d = c.hiddenSize
        var out: [(String, [Int])] = [("token_embd.weight", [c.vocabSize, d])]
        for l in 0..<c.numHiddenLayers {
            out += LayerTensor.layer(l, c, gguf: true).map { ($0.name, $0.shape) }
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
                throw GGUFError(file: g.path, tensor: name, reason: "missing (expected \(shape) from the \(architecture(c)).* metadata)")
            }
            guard t.shape == shape else {
                throw GGUFError(file: g.path, tensor: name, reason: "shape \(t.shape) does not match \(shape) implied by the \(architecture(c)).* metadata")
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
            layers.append(try LayerWeights.assemble(layer: l, config: c, gguf: true, vector: vector, linear: linear))
        }
        var head: Linear? = nil
        if includeHead { head = try linear(c.tiedEmbeddings ? "token_embd.weight" : "output.weight") }
        var w = LlamaWeights(config: c, embedding: embedding, layers: layers, finalNorm: try vector("output_norm.weight"),
                             head: head, ropeLayout: architecture(c) == "qwen2" ? .rotateHalf : .interleaved)
        w.ropeFreqFactors = try ropeFreqFactors(g, config: c)
        return w
    }

    public static let ropeFreqsTensor = "rope_freqs.weight"

    /// Llama-3.1's rope scaling as llama.cpp's converter stores it: `rope_freqs.weight`, one positive finite
    /// factor per rotary frequency ([head_dim/2], F32).
    static func ropeFreqFactors(_ g: GGUFFile, config c: LlamaConfig) throws -> [Float]? {
        guard let t = g.tensors[ropeFreqsTensor] else { return nil }
        let half = c.headDimension / 2
        guard t.shape == [half] else {
            throw GGUFError(file: g.path, tensor: t.name, reason: "shape \(t.shape) does not match [\(half)] (one factor per rotary frequency, head_dim/2)")
        }
        let q = try g.quantType(t)
        var out = [Float](repeating: 0, count: half)
        out.withUnsafeMutableBufferPointer { q.toFloat(g.data(t), $0.baseAddress!, half) }
        if let i = out.firstIndex(where: { !($0 > 0 && $0.isFinite) }) {
            throw GGUFError(file: g.path, tensor: t.name, reason: "factor \(i) is \(out[i]): rope frequency factors must be positive and finite")
        }
        return out
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
