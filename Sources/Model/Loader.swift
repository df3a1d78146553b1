import Foundation
import Quant
import Formats

/// A model ready to run: weights, tokenizer and where they came from.
public final class LoadedModel {
    public let path: String
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    public var config: LlamaConfig { model.config }
    /// How the checkpoint's weights are stored: the HF directory's dtype ("F32", "BF16", "F16") or the GGUF's
    /// projection type ("Q8_0", …). The fingerprint ignores it; predict names it when only it differs.
    public let quantization: String
    /// The checkpoint's identity from its weights (`LlamaWeights.fingerprint`): equal for the same checkpoint
    /// in any storage type or quantization, different for other weights.
    public let fingerprint: String
    /// The checkpoint's chat template and special-token texts (`chatInfo(forModel:)`).
    public let chat: ModelChatInfo

    init(path: String, model: LlamaModel, tokenizer: Tokenizer, quantization: String, chat: ModelChatInfo) {
        self.path = path; self.model = model; self.tokenizer = tokenizer; self.quantization = quantization; self.chat = chat
        fingerprint = model.weights.fingerprint(pool: model.pool)
    }

    /// A model path's chat template without loading its weights: a directory's chat_template.jinja or
    /// tokenizer_config.json `chat_template` (with its bos_token / eos_token), a GGUF's `tokenizer.chat_template`.
    public static func chatInfo(forModel path: String) throws -> ModelChatInfo {
        try checkModelPath(path)
        if !Files.isDirectory(path) { return try chatInfo(gguf: try GGUFFile(path: path)) }
        let c = try TokenizerConfig.read(directory: path)
        let source = HFCheckpoint.exists(path + "/chat_template.jinja") ? path + "/chat_template.jinja" : path + "/tokenizer_config.json"
        return ModelChatInfo(template: c?.chatTemplate, bosToken: c?.bosToken, eosToken: c?.eosToken,
                             source: c?.chatTemplate == nil ? path : source)
    }

    static func chatInfo(gguf g: GGUFFile) throws -> ModelChatInfo {
        ModelChatInfo(template: try g.stringIfPresent(SentencePieceModel.Key.chatTemplate), bosToken: nil, eosToken: nil,
                      source: g.path)
    }

    /// llama.cpp's `general.file_type` as a type name (the types this project reads), nil when absent or other.
    static func fileTypeName(_ g: GGUFFile) -> String? {
        switch (try? g.uintIfPresent("general.file_type")) ?? nil {
        case 0: return "F32"
        case 1: return "F16"
        case 7: return "Q8_0"
        default: return nil
        }
    }

    /// "BF16" for config.json's torch_dtype "bfloat16", etc.
    static func storageName(_ dtype: String?) -> String {
        switch dtype {
        case "float32": return "F32"
        case "bfloat16": return "BF16"
        case "float16": return "F16"
        default: return "unspecified"
        }
    }

    /// Loads a Hugging Face checkpoint directory. `tokenizerPath` overrides the directory's tokenizer
    /// (`tokenizerFile(inDirectory:)`).
    public static func load(path: String, tokenizerPath: String? = nil, includeHead: Bool = false,
                            threads: Int = ThreadPool.defaultThreadCount, backend: Backend = .simd,
                            kernel: Q8Kernel = .detected) throws -> LoadedModel {
        try checkModelPath(path)
        if !Files.isDirectory(path) {
            return try loadGGUF(path: path, tokenizerPath: tokenizerPath, includeHead: includeHead, threads: threads,
                                backend: backend, kernel: kernel)
        }
        let checkpoint = try HFCheckpoint(directory: path)
        let tokPath = try tokenizerPath ?? tokenizerFile(inDirectory: path)
        let tokenizer = try Tokenizer(path: tokPath)
        // Fewer tokens than embedding rows is normal (Qwen2.5: 151665 ids for 151936 rows), more is not.
        guard tokenizer.vocabSize <= checkpoint.config.vocabSize else {
            throw TokenizerError(source: tokPath, reason: "has \(tokenizer.vocabSize) tokens but the model's vocab_size is \(checkpoint.config.vocabSize)")
        }
        let pool = ThreadPool(threads: threads)
        let weights = try checkpoint.loadWeights(includeHead: includeHead, pool: pool)
        return LoadedModel(path: path, model: LlamaModel(weights: weights, pool: pool, backend: backend, kernel: kernel), tokenizer: tokenizer,
                           quantization: storageName(checkpoint.config.storageDtype), chat: try chatInfo(forModel: path))
    }

    /// Loads a GGUF file (llama.cpp's format). The tokenizer is rebuilt from the GGUF vocabulary unless
    /// `tokenizerPath` gives a tokenizer.model.
    public static func loadGGUF(path: String, tokenizerPath: String? = nil, includeHead: Bool = false,
                                threads: Int = ThreadPool.defaultThreadCount, backend: Backend = .simd,
                            kernel: Q8Kernel = .detected) throws -> LoadedModel {
        let g = try GGUFFile(path: path)
        let config = try GGUFModel.config(g)
        let tokenizer = try tokenizerPath.map { try Tokenizer(path: $0) }
            ?? Tokenizer.fromGGUF(g)
        guard tokenizer.vocabSize <= config.vocabSize else {
            throw TokenizerError(source: tokenizer.source, reason: "has \(tokenizer.vocabSize) pieces but the model's vocabulary has \(config.vocabSize) rows")
        }
        let pool = ThreadPool(threads: threads)
        let weights = try GGUFModel.loadWeights(g, config: config, includeHead: includeHead, pool: pool)
        return LoadedModel(path: path, model: LlamaModel(weights: weights, pool: pool, backend: backend, kernel: kernel), tokenizer: tokenizer,
                           quantization: fileTypeName(g) ?? weights.projectionStorage, chat: try chatInfo(gguf: g))
    }

    /// The tokenizer file of a checkpoint directory: `tokenizer.model` (SentencePiece: LLaMA-2, Mistral, which
    /// ship a tokenizer.json too) when present, else `tokenizer.json` (byte-level BPE: Llama-3, Qwen2).
    public static func tokenizerFile(inDirectory dir: String) throws -> String {
        for name in ["tokenizer.model", "tokenizer.json"] where HFCheckpoint.exists(dir + "/" + name) { return dir + "/" + name }
        throw FileError(path: dir, reason: "has neither tokenizer.model (SentencePiece) nor tokenizer.json (BPE); pass --tokenizer FILE")
    }

    /// The tokenizer of a model path without loading its weights: the directory's (`tokenizerFile(inDirectory:)`),
    /// or a GGUF file's vocabulary.
    public static func tokenizer(forModel path: String) throws -> Tokenizer {
        try checkModelPath(path)
        if !Files.isDirectory(path) {
            let g = try GGUFFile(path: path)
            return try Tokenizer.fromGGUF(g)
        }
        return try Tokenizer(path: try tokenizerFile(inDirectory: path))
    }

    /// A model path must exist (a mistyped --model is named as such, not as a missing file inside it).
    static func checkModelPath(_ path: String) throws {
        guard HFCheckpoint.exists(path) else {
            throw FileError(path: path, reason: "does not exist (expected a Hugging Face checkpoint directory or a .gguf file)")
        }
    }
}
