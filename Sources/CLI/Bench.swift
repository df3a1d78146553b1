import ArgumentParser
import Foundation
import Model
import Quant
import Formats

extension Backend: ExpressibleByArgument {}

enum WeightFormat: String, ExpressibleByArgument, CaseIterable {
    case f32, q8_0
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Forward-pass throughput per layer (prompt processing, or decoding with --decode).",
        discussion: """
        Times prompt processing (every position of every layer) and prints per layer ms and tokens/s, the \
        whole-model tokens/s, the achieved GFLOP/s of a layer and, measured in the same run on the same \
        shapes, OpenBLAS sgemm GFLOP/s on the layer's projections and our ratio to it. Synthetic models \
        are built in memory with the real shapes (throughput depends on shapes, not on weight values).

        --decode times KV-cached generation instead: after a prompt of each --contexts length, --tokens tokens \
        are decoded one at a time; it prints per layer ms/token and tokens/s, the model's tokens/s, the bytes \
        each token reads (weights, and keys/values of the context) and the fraction of this machine's memory \
        bandwidth (measured in the same run) that reaches. With a truncated preset the full-depth figures are \
        estimated from the median layer.

        Examples:
          llamaprobe bench --synthetic llama-2-13b --layers 2 --tokens 128
          llamaprobe bench --synthetic llama-2-13b --layers 2 --tokens 128 --backend blas --json
          llamaprobe bench --model models/tiny --weights q8_0
          llamaprobe bench --synthetic llama-2-7b --layers 4 --decode --contexts 128,1024 --tokens 128
        """)

    @Option(help: ArgumentHelp("A model to benchmark: a GGUF file or a Hugging Face checkpoint directory.", valueName: "path"))
    var model: String?

    @Option(help: ArgumentHelp("A preset shape built in memory: \(Preset.all.map(\.name).joined(separator: ", ")).", valueName: "preset"))
    var synthetic: String?

    @Option(help: "With --synthetic: keep only the first N layers.")
    var layers: Int?

    @Option(help: "Prompt length in tokens; with --decode, tokens decoded per timed run.")
    var tokens: Int = 128

    @Flag(help: "Time decoding (one token at a time against the KV cache) instead of prompt processing.")
    var decode = false

    @Option(help: ArgumentHelp("With --decode: context lengths (positions in the cache before the timed tokens), comma-separated.", valueName: "n,n"))
    var contexts: String = "128,1024"

    @Option(help: "Timed runs (the median is reported).")
    var repeats: Int = 5

    @Option(help: "Threads (the default is this machine's core count).")
    var threads: Int = ThreadPool.defaultThreadCount

    @Option(help: "Projection backend: simd (our int8 kernels) or blas (OpenBLAS sgemm on dequantized tiles).")
    var backend: Backend = .simd

    @Option(help: ArgumentHelp("SIMD kernel: auto, \(Q8Kernel.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "kernel"))
    var kernel: KernelChoice = .auto

    @Option(help: "Weights to compute with: q8_0 (int8, the default) or f32 (the exact OpenBLAS path).")
    var weights: WeightFormat = .q8_0

    @Option(help: "Positions: all (every layer computes every token) or last (the last layer stops at the last token after attention, as extraction and llama.cpp's prompt processing do).")
    var positions: Positions = .all

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    func validate() throws {
        if (model == nil) == (synthetic == nil) { throw ValidationError("pass exactly one of --model PATH or --synthetic PRESET") }
        if let synthetic, Preset.named(synthetic) == nil {
            throw ValidationError("unknown preset '\(synthetic)'; choose one of: \(Preset.all.map(\.name).joined(separator: ", "))")
        }
        if layers != nil && synthetic == nil { throw ValidationError("--layers goes with --synthetic") }
        if let layers, layers < 1 { throw ValidationError("--layers must be at least 1") }
        if tokens < 1 { throw ValidationError("--tokens must be at least 1") }
        if repeats < 1 { throw ValidationError("--repeats must be at least 1") }
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
        if decode && contextList == nil { throw ValidationError("--contexts must be comma-separated positive integers, e.g. 128,1024") }
        try kernel.validate()
    }

    var contextList: [Int]? {
        let list = contexts.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !list.isEmpty, list.allSatisfy({ ($0 ?? 0) >= 1 }) else { return nil }
        return list.map { $0! }
    }

    func run() throws {
        let pool = ThreadPool(threads: threads)
        var w: LlamaWeights
        var fullDepth: Int
        if let synthetic {
            var c = Preset.named(synthetic)!.config
            fullDepth = c.numHiddenLayers
            if let layers {
                guard layers <= c.numHiddenLayers else { throw CLIError("--layers \(layers) exceeds the \(c.numHiddenLayers) layers of \(synthetic)") }
                c.numHiddenLayers = layers
            }
            if !json { note("building \(synthetic) (\(c.numHiddenLayers) layers, \(weights.rawValue)) in memory") }
            w = LlamaWeights.synthetic(config: c, seed: 1, includeHead: decode, quantized: weights == .q8_0, pool: pool)
        } else {
            let loaded = try LoadedModel.load(path: model!, includeHead: decode, threads: threads, kernel: kernel.resolved)
            w = loaded.model.weights
            fullDepth = w.config.numHiddenLayers
            if weights == .q8_0 { w = w.quantizedQ8_0(pool: pool) }
        }
        guard tokens <= w.config.maxPositionEmbeddings else {
            throw CLIError("--tokens \(tokens) exceeds max_position_embeddings \(w.config.maxPositionEmbeddings)")
        }
        let m = LlamaModel(weights: w, pool: pool, backend: backend, kernel: kernel.resolved)
        if decode { return try runDecode(m, fullDepth: fullDepth) }
        let r = try Bench.run(model: m, tokens: tokens, repeats: repeats, positions: positions, fullDepth: fullDepth)
        if json { return try printJSON(r) }
        print("\(model ?? synthetic!): \(w.config.summary)")
        print("weights \(weights.rawValue), backend \(r.kernel), \(r.threads) thread(s), \(r.tokens) tokens, median of \(r.repeats)")
        print("layer   ms/token   tokens/s")
        for l in r.layers { print(String(format: "%5d %10.3f %10.1f", l.layer, l.ms_per_token, l.tokens_per_second)) }
        print(String(format: "model: %.2f tokens/s (%d layers)", r.model_tokens_per_second, w.config.numHiddenLayers))
        if r.full_depth_layers != w.config.numHiddenLayers {
            print(String(format: "full depth (%d layers, estimated): %.2f tokens/s", r.full_depth_layers, r.full_depth_tokens_per_second))
        }
        print(String(format: "layer: %.1f GFLOP/s; OpenBLAS sgemm on the same shapes: %.1f GFLOP/s; ratio %.2f",
                     r.gflops, r.sgemm_gflops, r.ratio_to_sgemm))
    }

    /// `--json`: the report as one line of JSON with sorted keys.
    func printJSON<T: Encodable>(_ value: T) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        print(String(decoding: try e.encode(value), as: UTF8.self))
    }

    func runDecode(_ m: LlamaModel, fullDepth: Int) throws {
        let c = m.config
        let list = contextList ?? []
        if let big = list.first(where: { $0 + tokens > c.maxPositionEmbeddings }) {
            throw CLIError("--contexts \(big) + --tokens \(tokens) exceeds max_position_embeddings \(c.maxPositionEmbeddings)")
        }
        let r = try Bench.decode(model: m, contexts: list, tokens: tokens, repeats: repeats, fullDepth: fullDepth)
        if json { return try printJSON(r) }
        func mb(_ b: Double) -> String { String(format: "%.1f MB", b / 1e6) }
        print("\(model ?? synthetic!): \(c.summary)")
        print("decode: weights \(weights.rawValue), backend \(r.kernel), \(r.threads) thread(s), \(tokens) tokens per run, median of \(r.repeats)")
        print("weights read per token: \(mb(Double(r.weight_bytes_per_token))) (\(mb(Double(r.layer_weight_bytes))) per layer); measured memory bandwidth \(String(format: "%.1f", r.memory_bandwidth_gbps)) GB/s")
        for x in r.contexts {
            print("context \(x.context):")
            print("layer   ms/token   tokens/s")
            for l in x.layers { print(String(format: "%5d %10.3f %10.1f", l.layer, l.ms_per_token, l.tokens_per_second)) }
            print(String(format: "model: %.2f tokens/s (%.2f ms/token, %d layers); keys/values read per token %@; %.0f%% of the measured bandwidth",
                         x.model_tokens_per_second, x.ms_per_token, c.numHiddenLayers, mb(x.kv_bytes_per_token), 100 * x.bandwidth_fraction))
            if r.full_depth_layers != c.numHiddenLayers {
                print(String(format: "full depth (%d layers, estimated): %.2f tokens/s, %.0f%% of the measured bandwidth",
                             r.full_depth_layers, x.full_depth_tokens_per_second, 100 * x.full_depth_bandwidth_fraction))
            }
        }
    }
}
