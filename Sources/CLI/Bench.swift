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
        abstract: "Forward-pass throughput per layer, with OpenBLAS sgemm measured on the same shapes.",
        discussion: """
        Times prompt processing (every position of every layer) and prints per layer ms and tokens/s, the \
        whole-model tokens/s, the achieved GFLOP/s of a layer and, measured in the same run on the same \
        shapes, OpenBLAS sgemm GFLOP/s on the layer's projections and our ratio to it. Synthetic models \
        are built in memory with the real shapes (throughput depends on shapes, not on weight values).

        Examples:
          llamaprobe bench --synthetic llama-2-13b --layers 2 --tokens 128
          llamaprobe bench --synthetic llama-2-13b --layers 2 --tokens 128 --backend blas --json
          llamaprobe bench --model models/tiny --weights q8_0
        """)

    @Option(help: ArgumentHelp("A model to benchmark: a GGUF file or a Hugging Face checkpoint directory.", valueName: "path"))
    var model: String?

    @Option(help: ArgumentHelp("A preset shape built in memory: \(Preset.all.map(\.name).joined(separator: ", ")).", valueName: "preset"))
    var synthetic: String?

    @Option(help: "With --synthetic: keep only the first N layers.")
    var layers: Int?

    @Option(help: "Prompt length in tokens.")
    var tokens: Int = 128

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
        try kernel.validate()
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
            w = LlamaWeights.synthetic(config: c, seed: 1, quantized: weights == .q8_0, pool: pool)
        } else {
            let loaded = try LoadedModel.load(path: model!, threads: threads, kernel: kernel.resolved)
            w = loaded.model.weights
            fullDepth = w.config.numHiddenLayers
            if weights == .q8_0 { w = w.quantizedQ8_0(pool: pool) }
        }
        guard tokens <= w.config.maxPositionEmbeddings else {
            throw CLIError("--tokens \(tokens) exceeds max_position_embeddings \(w.config.maxPositionEmbeddings)")
        }
        let m = LlamaModel(weights: w, pool: pool, backend: backend, kernel: kernel.resolved)
        let r = try Bench.run(model: m, tokens: tokens, repeats: repeats, positions: positions, fullDepth: fullDepth)
        if json {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            print(String(decoding: try e.encode(r), as: UTF8.self))
            return
        }
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
}
