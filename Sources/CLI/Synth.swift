import ArgumentParser
import Foundation
import Model
import Quant
import Formats

extension QuantType.ID: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.uppercased()) }
    public static var allValueStrings: [String] { allCases.map { $0.rawValue.lowercased() } }
}

/// The float types a safetensors checkpoint stores.
enum FloatDType: String, ExpressibleByArgument, CaseIterable {
    case f32, f16, bf16
    var id: QuantType.ID { QuantType.ID(rawValue: rawValue.uppercased())! }
}

struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a LLaMA checkpoint with seeded random weights (Hugging Face layout).",
        discussion: """
        Writes config.json, model.safetensors and tokenizer.model. Presets: \(Preset.all.map(\.name).joined(separator: ", ")). \
        `tiny` is the demo model; the other presets have the exact shapes and settings of the released \
        models' config.json (llama-2-*: Meta's LLaMA-2; llama-3.1-8b and llama-3.2-1b with llama3 rope scaling \
        and the 128K vocabulary; qwen2.5-7b with q/k/v biases; mistral-7b as v0.3). Use --layers to truncate \
        the depth, e.g. for benchmarks. The tokenizer is trained with SentencePiece on the \
        corpus the project ships (data/tokenizer/corpus.txt), unless --tokenizer gives one.

        Example: llamaprobe synth --preset tiny --out models/tiny
        """)

    @Option(help: "Preset shape: \(Preset.all.map(\.name).joined(separator: ", ")).")
    var preset: String

    @Option(help: ArgumentHelp("Output directory (created).", valueName: "dir"))
    var out: String

    @Option(help: "Keep only the first N layers.")
    var layers: Int?

    @Option(help: "Random seed: the same seed gives the same weights.")
    var seed: UInt64 = 0

    @Option(help: "Storage type of the weights: f32, f16 or bf16.")
    var dtype: FloatDType = .f32

    @Option(help: ArgumentHelp("Use this SentencePiece tokenizer.model instead of training one (e.g. Meta's LLaMA-2 tokenizer).", valueName: "file"))
    var tokenizer: String?

    @Option(help: ArgumentHelp("Corpus to train the tokenizer on (default: the project's data/tokenizer/corpus.txt).", valueName: "file"))
    var corpus: String?

    @Option(help: "Threads used to generate weights (the default is this machine's core count).")
    var threads: Int = ThreadPool.defaultThreadCount

    func validate() throws {
        guard Preset.named(preset) != nil else {
            throw ValidationError("unknown preset '\(preset)'; choose one of: \(Preset.all.map(\.name).joined(separator: ", "))")
        }
        if let layers, layers < 1 { throw ValidationError("--layers must be at least 1") }
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let p = Preset.named(preset)!
        var config = p.config
        if let layers {
            guard layers <= config.numHiddenLayers else {
                throw CLIError("--layers \(layers) exceeds the \(config.numHiddenLayers) layers of \(preset)")
            }
            config.numHiddenLayers = layers
        }
        let t0 = now()
        let tokenizerData: Data
        if let tokenizer {
            let tok = try Tokenizer(path: tokenizer)
            guard tok.vocabSize <= config.vocabSize else {
                throw CLIError("the tokenizer has \(tok.vocabSize) pieces, more than the preset's vocab_size \(config.vocabSize)")
            }
            tokenizerData = tok.serialized
        } else {
            let corpusPath = try corpus ?? Synth_.defaultCorpus()
            note("training a \(p.tokenizerVocab)-piece SentencePiece BPE tokenizer on \(corpusPath)")
            tokenizerData = try Tokenizer.train(corpus: corpusPath, vocabSize: p.tokenizerVocab)
        }
        let pool = ThreadPool(threads: threads)
        let params = HFCheckpoint.expectedTensors(config).reduce(0) { $0 + $1.shape.reduce(1, *) }
        note("writing \(preset)\(layers.map { " (\($0) layers)" } ?? "") to \(out): \(params) parameters, \(dtype.rawValue)")
        var lastReport = now()
        try Model.Synth.write(config: config, to: out, seed: seed, dtype: dtype.id, tokenizer: tokenizerData, pool: pool) { name, i, n in
            if now() - lastReport > 2 { note("  [\(i)/\(n)] \(name)"); lastReport = now() }
        }
        note("done in \(formatSeconds(now() - t0))")
        print(out)
    }
}

typealias Synth_ = Model.Synth
