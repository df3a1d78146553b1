import Foundation
import Quant
import Formats
import Model
import Probe

/// Small valid files of each format, written with the project's own writers (or taken from the committed
/// test fixtures): the fuzzer's starting corpus, and a check that every reader accepts what we write.
extension FuzzTargets {
    /// The package root (for the fixtures), from this file's path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    static func fixture(_ relative: String) throws -> [UInt8] { try Files.read(root + "/Tests/fixtures/" + relative) }

    static func floats(_ n: Int, _ seed: Float = 0.25) -> [Float] { (0..<n).map { Float($0 % 7) * seed - 0.5 } }

    static let shardMetadata = ShardMetadata(model: "fuzz-model", labels: ["happy", "sad", "angry"], template: "llama2-chat",
                                             suffix: " I think the emotional state of this user is", systemPrompt: "",
                                             layers: [0, 1], withEmbeddings: false, dtype: .f32, dModel: 4)

    /// Shard metadata with a readout recipe storing two hook points (mlp_out, resid_post) read at `mean`.
    static var hookedShardMetadata: ShardMetadata {
        var m = shardMetadata
        var r = ReadoutRecipe(template: "llama2-chat", suffix: m.suffix, systemPrompt: nil, maxTokens: 64, withEmbeddings: false,
                              tokenizer: "sha256:" + String(repeating: "0", count: 64), position: "mean")
        r.hooks = ["mlp_out", "resid_post"]
        m.readout = r
        return m
    }

    static func shardContent(metadata: ShardMetadata = shardMetadata) throws -> [UInt8] {
        let acts = metadata.hooks.indices.map { floats(2 * 2 * 4, 0.25 + Float($0)) }
        let z = try Shard.withBytes(acts) { try Shard.encode(metadata: metadata, activations: $0, labels: [0, 2], rows: [0, 1], nTokens: [9, 12]) }
        return try Zstd.decompress(z)
    }


    /// The seed files of a target (valid inputs its reader accepts).
    public static func seeds(_ name: String) throws -> [[UInt8]] {
        func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }
        switch name {
        case "safetensors":
            let a = floats(6), b: [UInt16] = [0x3F80, 0xBF80, 0x4000, 0], c: [Int64] = [3, -1]
            return a.withUnsafeBytes { ab in b.withUnsafeBytes { bb in c.withUnsafeBytes { cb in
                [SafeTensors.encode([(.init("a.weight", .f32, [2, 3]), ab), (.init("b", .bf16, [4]), bb), (.init("c", .i64, [2]), cb)],
                                    metadata: ["format": "pt"])]
            } } }
        case "safetensors-index":
            return [utf8(#"{"metadata":{"total_size":96},"weight_map":{"model.embed_tokens.weight":"model-00001-of-00002.safetensors","lm_head.weight":"model-00002-of-00002.safetensors"}}"#)]
        case "config":
            return [try fixture("models/gqa-bf16/config.json"), try fixture("models/gqa-f16-theta/config.json")]
        case "gguf":
            // A one-layer model (the fixture tokenizer's vocabulary, width 32) synthesized and quantized by the
            // project, in Q8_0 and F16.
            let tokenizer = Data(try fixture("tokenizer/fixture.model"))
            let vocab = try Tokenizer(serialized: tokenizer, source: "fixture.model").vocabSize
            let c = LlamaConfig(hiddenSize: 32, intermediateSize: 32, numHiddenLayers: 1, numAttentionHeads: 2,
                                numKeyValueHeads: 1, vocabSize: vocab, maxPositionEmbeddings: 64, tieWordEmbeddings: true)
            let dir = NSTemporaryDirectory() + "llamaprobe-fuzz-seed-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try Synth.write(config: c, to: dir, seed: 1, dtype: .f32, tokenizer: tokenizer, pool: pool)
            var seeds = try Quantizer.OutputType.allCases.map { type in
                let out = dir + "/model.\(type.rawValue).gguf"
                try Quantizer.run(checkpoint: try HFCheckpoint(directory: dir), tokenizer: tokenizer, tokenizerSource: "fixture.model",
                                  outPath: out, type: type, pool: pool)
                return try Files.read(out)
            }
            // And one with a byte-level BPE ("gpt2") vocabulary, from the Llama-3-style tokenizer.json fixture.
            let bpe = try Tokenizer(path: root + "/Tests/fixtures/bpe/llama3/tokenizer.json")
            var cb = c
            cb.vocabSize = bpe.vocabSize
            let bpeDir = dir + "/bpe"
            try Synth.write(config: cb, to: bpeDir, seed: 1, dtype: .f32, tokenizer: tokenizer, pool: pool)
            try Quantizer.run(checkpoint: try HFCheckpoint(directory: bpeDir), tokenizer: bpe, outPath: bpeDir + "/model.gguf",
                              type: .q8_0, pool: pool)
            seeds.append(try Files.read(bpeDir + "/model.gguf"))
            return seeds
        case "tokenizer-model":
            return [try fixture("tokenizer/fixture.model")]
        case "tokenizer-json":
            return [try fixture("bpe/llama3/tokenizer.json"), try fixture("bpe/qwen2/tokenizer.json")]
        case "dataset-csv":
            return [utf8("message,label\n\"I passed, finally!\",happy\nno one came,sad\r\n\"she said \"\"no\"\"\",angry\n")]
        case "dataset-jsonl":
            return [utf8("{\"message\": \"I passed!\", \"label\": \"happy\"}\n{\"message\": \"no one came\\n\", \"label\": \"sad\"}\n")]
        case "shard":
            return [try Zstd.compress(try shardContent()), try Zstd.compress(try shardContent(metadata: hookedShardMetadata))]
        case "shard-content":
            return [try shardContent(), try shardContent(metadata: hookedShardMetadata)]
        case "manifest":
            let z = try Zstd.compress(try shardContent())
            let meta = try JSONSerialization.jsonObject(with: JSONEncoder().encode(shardMetadata))
            let record: [String: Any] = ["file": Shard.fileName(worker: 0, index: 0), "index": 0, "first_row": 0, "last_row": 1,
                                         "count": 2, "bytes": z.count, "sha256": SHA256.hex(z), "skipped": [], "truncated": []]
            let m: [String: Any] = ["format": "llamaprobe-manifest", "version": 1, "worker": 0, "workers": 1,
                                    "config": ["rows_total": "2"], "metadata": meta, "shards": [record], "complete": true,
                                    "skipped_after_last_shard": []]
            return [Array(try JSONSerialization.data(withJSONObject: m, options: [.prettyPrinted, .sortedKeys]))]
        case "pth":
            return [TorchCheckpoint.encode([TorchTensor(name: "classifier.0.weight", shape: [3, 4], values: floats(12)),
                                            TorchTensor(name: "classifier.0.bias", shape: [3], values: floats(3))])]
        case "probes":
            let w = floats(12), b = floats(3)
            return w.withUnsafeBytes { wb in b.withUnsafeBytes { bb in
                [SafeTensors.encode([(.init("layer0.weight", .f32, [3, 4]), wb), (.init("layer0.bias", .f32, [3]), bb),
                                     (.init("layer0.final.weight", .f32, [3, 4]), wb), (.init("layer0.final.bias", .f32, [3]), bb)],
                                    metadata: ["format": "llamaprobe-probes", "labels": #"["happy","sad","angry"]"#, "layers": "[0]",
                                               "model": "fuzz-model", "best_layer": "0", "d_model": "4", "with_embeddings": "false",
                                               "best_epochs": #"{"0":3}"#])]
            } }
        case "npy":
            func npy(_ descr: String, _ shape: String, _ body: [UInt8]) -> [UInt8] {
                var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shape), }"
                while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
                header += "\n"
                let n = header.utf8.count
                return [0x93] + utf8("NUMPY") + [1, 0, UInt8(n & 0xFF), UInt8(n >> 8)] + utf8(header) + body
            }
            let f = floats(6).withUnsafeBytes { Array($0) }, l = [Int64(0), 1, 2].withUnsafeBytes { Array($0) }
            return [npy("<f4", "(2, 3)", f), npy("<i8", "(3,)", l)]
        case "chat-template":
            let names = ["llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct-v0.1",
                         "mistral-7b-instruct-v0.2", "mistral-7b-instruct-v0.3", "llama-2-7b-chat"]
            return try names.map { try fixture("chat/templates/\($0).jinja") }
        case "split":
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            return [Array(try e.encode(SplitFile(train: [0, 2, 3], val: [1])))]
        default:
            return []
        }
    }
}
