import ArgumentParser
import Foundation
import Model
import Quant
import Formats

/// The release printed by `llamaprobe --version`.
let llamaprobeVersion = "0.1.0"

@main
struct LlamaProbe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llamaprobe",
        abstract: "Read the residual stream of LLaMA models on a CPU.",
        discussion: """
        Runs LLaMA-architecture models (Hugging Face checkpoints in exact f32, or int8 GGUF files), captures the residual \
        stream after every layer (TransformerLens resid_post, before the final norm), and writes it \
        to safetensors.

        Start with `llamaprobe demo --out demo-run` or `make demo`.
        """,
        version: llamaprobeVersion,
        subcommands: [Demo.self, Synth.self, QuantizeCommand.self, Tokenize.self, Residuals.self, Extract.self, Shards.self, Train.self, Predict.self, Generate.self, BenchCommand.self, Info.self])
}

// MARK: - Shared option groups

struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Model: a GGUF file (F32, F16 or Q8_0, e.g. from `llamaprobe quantize`) or a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.model or tokenizer.json).", valueName: "path"))
    var model: String

    @Option(name: .long, help: ArgumentHelp("Tokenizer to use instead of the model's own: a SentencePiece tokenizer.model or a Hugging Face tokenizer.json (default: the directory's tokenizer.model, else its tokenizer.json, or the GGUF vocabulary).", valueName: "file"))
    var tokenizer: String?

    @Option(name: .long, help: "Threads for the forward pass (the default is this machine's core count).")
    var threads: Int = ThreadPool.defaultThreadCount

    @Option(name: .long, help: "Projection backend for int8 weights: simd (our kernels) or blas (OpenBLAS sgemm on dequantized tiles).")
    var backend: Backend = .simd

    @Option(name: .long, help: ArgumentHelp("SIMD kernel for int8 weights: auto, \(Q8Kernel.allCases.map(\.rawValue).joined(separator: ", ")) (avx512vnni-a8 quantizes activations to 8 bits like llama.cpp: fastest, least exact).", valueName: "kernel"))
    var kernel: KernelChoice = .auto

    func validate() throws {
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
        try kernel.validate()
    }

    func load(includeHead: Bool = false) throws -> LoadedModel {
        try LoadedModel.load(path: model, tokenizerPath: tokenizer, includeHead: includeHead, threads: threads,
                             backend: backend, kernel: kernel.resolved)
    }
}

extension PromptTemplate: ExpressibleByArgument {}
extension Positions: ExpressibleByArgument {}

struct TemplateOptions: ParsableArguments {
    @Option(name: .long, help: "Prompt template: llama2-chat ([INST] message [/INST] + suffix) or raw (text as given).")
    var template: PromptTemplate = .llama2Chat

    @Option(name: .long, help: ArgumentHelp("Text appended after the template (default for llama2-chat: \"\(PromptTemplate.defaultSuffix)\"; for raw: none).", valueName: "text"))
    var suffix: String?

    @Option(name: .customLong("system-prompt"), help: ArgumentHelp("System prompt, rendered as <<SYS>>…<</SYS>> before the first user message (llama2-chat).", valueName: "text"))
    var systemPrompt: String?

    var renderer: PromptRenderer { PromptRenderer(template: template, suffix: suffix, systemPrompt: systemPrompt) }

    func validate() throws {
        if template == .raw && systemPrompt != nil {
            throw ValidationError("--system-prompt needs --template llama2-chat (raw prompts are used as given)")
        }
    }
}

/// Progress lines on stderr (stdout stays clean for data).
func note(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

func formatSeconds(_ s: Double) -> String { String(format: "%.2f s", s) }

func now() -> Double { Date().timeIntervalSince1970 }

/// `--kernel`: auto (the best this CPU runs; W8A8 only on request) or a named kernel.
enum KernelChoice: ExpressibleByArgument, Equatable {
    case auto
    case named(Q8Kernel)

    init?(argument: String) {
        if argument == "auto" { self = .auto }
        else if let k = Q8Kernel(rawValue: argument) { self = .named(k) }
        else { return nil }
    }

    static var allValueStrings: [String] { ["auto"] + Q8Kernel.allCases.map(\.rawValue) }

    var resolved: Q8Kernel {
        switch self {
        case .auto: return .detected
        case .named(let k): return k
        }
    }

    func validate() throws {
        if case .named(let k) = self, !Q8Kernel.supported.contains(k) {
            throw ValidationError("this CPU cannot run --kernel \(k.rawValue); it supports: \(Q8Kernel.supported.map(\.rawValue).joined(separator: ", "))")
        }
    }
}

/// A failure while running a command (input problems found at run time): one line, exit status 1, no usage text.
struct CLIError: LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}
