import Foundation
import Quant
import Formats

/// Shapes of the built-in synthetic models.
public struct Preset: Sendable {
    public let name: String
    public let config: LlamaConfig
    /// Pieces of the tokenizer trained for it (at most the model's vocab_size).
    public let tokenizerVocab: Int

    public static let all: [Preset] = [
        // The demo model: small enough that the whole pipeline runs in seconds.
        Preset(name: "tiny", config: LlamaConfig(
            hiddenSize: 128, intermediateSize: 344, numHiddenLayers: 4, numAttentionHeads: 4, numKeyValueHeads: 2,
            rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: 1024, maxPositionEmbeddings: 2048), tokenizerVocab: 1024),
        // Exact shapes of Meta's LLaMA-2 models (for benchmarking; --layers truncates the depth).
        Preset(name: "llama-2-7b", config: LlamaConfig(
            hiddenSize: 4096, intermediateSize: 11008, numHiddenLayers: 32, numAttentionHeads: 32,
            rmsNormEps: 1e-5, vocabSize: 32000, maxPositionEmbeddings: 4096), tokenizerVocab: 4096),
        Preset(name: "llama-2-13b", config: LlamaConfig(
            hiddenSize: 5120, intermediateSize: 13824, numHiddenLayers: 40, numAttentionHeads: 40,
            rmsNormEps: 1e-5, vocabSize: 32000, maxPositionEmbeddings: 4096), tokenizerVocab: 4096),
        Preset(name: "llama-2-70b", config: LlamaConfig(
            hiddenSize: 8192, intermediateSize: 28672, numHiddenLayers: 80, numAttentionHeads: 64, numKeyValueHeads: 8,
            rmsNormEps: 1e-5, vocabSize: 32000, maxPositionEmbeddings: 4096), tokenizerVocab: 4096),
        // Today's models, with the shapes and settings of their config.json (the tokenizer stays a small
        // SentencePiece one: the weights are random, only the shapes and the arithmetic matter).
        Preset(name: "llama-3.1-8b", config: llama3(LlamaConfig(
            hiddenSize: 4096, intermediateSize: 14336, numHiddenLayers: 32, numAttentionHeads: 32, numKeyValueHeads: 8,
            rmsNormEps: 1e-5, ropeTheta: 500000, vocabSize: 128256, maxPositionEmbeddings: 131072), factor: 8), tokenizerVocab: 4096),
        Preset(name: "llama-3.2-1b", config: llama3(LlamaConfig(
            hiddenSize: 2048, intermediateSize: 8192, numHiddenLayers: 16, numAttentionHeads: 32, numKeyValueHeads: 8,
            headDim: 64, rmsNormEps: 1e-5, ropeTheta: 500000, vocabSize: 128256, maxPositionEmbeddings: 131072,
            tieWordEmbeddings: true), factor: 32), tokenizerVocab: 4096),
        Preset(name: "qwen2.5-7b", config: family(LlamaConfig(
            hiddenSize: 3584, intermediateSize: 18944, numHiddenLayers: 28, numAttentionHeads: 28, numKeyValueHeads: 4,
            rmsNormEps: 1e-6, ropeTheta: 1000000, vocabSize: 152064, maxPositionEmbeddings: 32768), "qwen2") {
                $0.slidingWindow = 131072; $0.useSlidingWindow = false; $0.maxWindowLayers = 28
            }, tokenizerVocab: 4096),
        Preset(name: "mistral-7b", config: family(LlamaConfig(
            hiddenSize: 4096, intermediateSize: 14336, numHiddenLayers: 32, numAttentionHeads: 32, numKeyValueHeads: 8,
            rmsNormEps: 1e-5, ropeTheta: 1000000, vocabSize: 32768, maxPositionEmbeddings: 32768), "mistral") { _ in },
            tokenizerVocab: 4096),
    ]

    /// Llama-3.x's rope scaling (`rope_type: llama3`, original context 8192) with `factor`.
    static func llama3(_ c: LlamaConfig, factor: Double) -> LlamaConfig {
        var c = c
        c.ropeScaling = .object(["rope_type": .string("llama3"), "factor": .number(factor), "low_freq_factor": .number(1),
                                 "high_freq_factor": .number(4), "original_max_position_embeddings": .number(8192)])
        return c
    }

    /// `c` as a model of `modelType` (Hugging Face's architecture name with it), then `edit`.
    static func family(_ c: LlamaConfig, _ modelType: String, _ edit: (inout LlamaConfig) -> Void) -> LlamaConfig {
        var c = c
        c.modelType = modelType
        c.architectures = [LlamaConfig.families.first { $0.modelType == modelType }!.architectures[0]]
        edit(&c)
        return c
    }

    public static func named(_ name: String) -> Preset? { all.first { $0.name == name } }
}

/// Deterministic random weights: each tensor's values come from its name and the seed only, in blocks
/// that can be generated in parallel and streamed to disk.
public struct SyntheticWeights: Sendable {
    public let config: LlamaConfig
    public let seed: UInt64
    static let block = 1 << 16

    public init(config: LlamaConfig, seed: UInt64) { self.config = config; self.seed = seed }

    /// Standard deviation of each tensor's values. Projections ~ 1/sqrt(fan_in) keep every block's output
    /// of order one; norm weights near 1; the residual stream grows slowly and stays finite at any depth.
    public func distribution(_ name: String, shape: [Int]) -> (mean: Float, std: Float) {
        if name.hasSuffix("norm.weight") { return (1, 0.1) }
        if name.contains("embed_tokens") || name.hasPrefix("lm_head") { return (0, 1) }
        guard shape.count == 2 else { return (0, 0.1) }   // Qwen2's q/k/v biases
        return (0, 1 / Float(shape[1]).squareRoot())
    }

    /// Fills `out` with elements [start, start + count) of tensor `name` (uniform with the given mean/std).
    public func fill(_ name: String, shape: [Int], start: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        let (mean, std) = distribution(name, shape: shape)
        let halfWidth = std * Float(3).squareRoot()
        var nameHash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { nameHash = (nameHash ^ UInt64(b)) &* 0x100_0000_01b3 }
        var i = 0
        while i < count {
            let index = start + i
            let blockIndex = index / Self.block
            var state = seed ^ nameHash ^ (UInt64(blockIndex) &* 0x9E37_79B9_7F4A_7C15)
            let blockEnd = min(count, (blockIndex + 1) * Self.block - start)
            // Skip to the element's position inside its block.
            for _ in 0..<(index - blockIndex * Self.block) { _ = splitmix(&state) }
            while i < blockEnd {
                let u = Float(splitmix(&state) >> 40) * (1 / Float(1 << 24))  // [0, 1)
                out[i] = mean + halfWidth * (2 * u - 1)
                i += 1
            }
        }
    }

    @inline(__always)
    func splitmix(_ s: inout UInt64) -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public enum Synth {
    /// Writes a Hugging Face layout checkpoint (config.json, model.safetensors, tokenizer.model) with
    /// seeded random weights, streaming tensor by tensor.
    public static func write(config: LlamaConfig, to dir: String, seed: UInt64, dtype: QuantType.ID,
                             tokenizer: Data, pool: ThreadPool, progress: ((String, Int, Int) -> Void)? = nil) throws {
        var c = config
        c.torchDtype = ["F32": "float32", "F16": "float16", "BF16": "bfloat16"][dtype.rawValue]
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tensors = HFCheckpoint.expectedTensors(c)
        guard let stDtype = SafeTensorsDType(dtype) else {
            throw FileError(path: dir, reason: "synthetic checkpoints are stored as f32, f16 or bf16, not \(dtype.rawValue)")
        }
        let writer = try SafeTensorsWriter(
            path: dir + "/model.safetensors",
            tensors: tensors.map { .init($0.name, stDtype, $0.shape) },
            metadata: ["format": "pt", "generator": "llamaprobe synth", "seed": String(seed)])
        let synth = SyntheticWeights(config: c, seed: seed)
        let chunk = 1 << 22
        let buffer = FloatBuffer(count: chunk)
        for (n, t) in tensors.enumerated() {
            progress?(t.name, n, tensors.count)
            let total = t.shape.reduce(1, *)
            var start = 0
            while start < total {
                let count = min(chunk, total - start)
                pool.parallelRanges(count, chunksPerThread: 4, minChunk: 4096) { r in
                    synth.fill(t.name, shape: t.shape, start: start + r.lowerBound, count: r.count,
                               into: buffer.pointer + r.lowerBound)
                }
                try writer.writeFloats(UnsafeBufferPointer(start: buffer.pointer, count: count))
                start += count
            }
        }
        try writer.commit()
        try writeAtomically(try c.jsonData(), to: dir + "/config.json")
        try writeAtomically(tokenizer, to: dir + "/tokenizer.model")
    }

    /// Finds the tokenizer corpus shipped with the project.
    public static func defaultCorpus() throws -> String {
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["LLAMAPROBE_CORPUS"] { candidates.append(env) }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        var dir = exe
        for _ in 0..<5 {   // .build/<triple>/release/llamaprobe -> repository root
            candidates.append(dir.appendingPathComponent("data/tokenizer/corpus.txt").path)
            dir = dir.deletingLastPathComponent()
        }
        candidates.append(FileManager.default.currentDirectoryPath + "/data/tokenizer/corpus.txt")
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
        throw FileError(path: "data/tokenizer/corpus.txt",
                        reason: "the tokenizer corpus was not found next to the executable or in the current directory; pass --corpus FILE, set LLAMAPROBE_CORPUS, or pass --tokenizer FILE")
    }
}

/// Writes data under a temporary name, fsyncs and renames.
public func writeAtomically(_ data: Data, to path: String) throws {
    let w = try AtomicFileWriter(path: path)
    try data.withUnsafeBytes { try w.write($0) }
    try w.commit()
}

extension LlamaWeights {
    /// Seeded random weights built in memory (no disk), with exactly the values `Synth.write` stores in
    /// f32; with `quantized`, projections are stored as Q8_0 (those whose row length is not a multiple of
    /// 32 stay f32, as llama.cpp keeps them in F16). Throughput depends on shapes, not on values: this is
    /// what benchmarks run on.
    public static func synthetic(config c: LlamaConfig, seed: UInt64, includeHead: Bool = false,
                                 quantized: Bool = false, pool: ThreadPool) -> LlamaWeights {
        let synth = SyntheticWeights(config: c, seed: seed)
        let shapes = Dictionary(uniqueKeysWithValues: HFCheckpoint.expectedTensors(c).map { ($0.name, $0.shape) })
        func matrix(_ name: String) -> Matrix {
            let shape = shapes[name]!
            let rows = shape[0], cols = shape.count > 1 ? shape[1] : 1
            let buf = FloatBuffer(count: rows * cols)
            pool.parallelRanges(rows * cols, chunksPerThread: 4, minChunk: 4096) { r in
                synth.fill(name, shape: shape, start: r.lowerBound, count: r.count, into: buf.pointer + r.lowerBound)
            }
            return Matrix(buf, rows: rows, cols: cols)
        }
        func linear(_ name: String) -> Linear {
            let m = matrix(name)
            guard quantized, m.cols % Q8_0.blockSize == 0 else { return .f32(m) }
            return .q8_0(PackedQ8Matrix(quantizing: m.pointer, rows: m.rows, cols: m.cols, pool: pool))
        }
        func vector(_ name: String) -> [Float] { let m = matrix(name); return Array(UnsafeBufferPointer(start: m.pointer, count: m.rows)) }
        let embedding = matrix("model.embed_tokens.weight")
        let layers = (0..<c.numHiddenLayers).map { l -> LayerWeights in
            LayerWeights.assemble(layer: l, config: c, gguf: false, vector: vector, linear: linear)
        }
        var head: Linear? = nil
        if includeHead { head = c.tiedEmbeddings ? .f32(embedding) : linear("lm_head.weight") }
        return LlamaWeights(config: c, embedding: EmbeddingTable(embedding), layers: layers, finalNorm: vector("model.norm.weight"),
                            head: head, ropeLayout: .rotateHalf)
    }
}
