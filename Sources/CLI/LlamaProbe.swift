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
    @Option(name: .long, help: ArgumentHelp("""
        Prompt template: auto (the checkpoint's own chat template from tokenizer_config.json, chat_template.jinja \
        or the GGUF, rendered as transformers' apply_chat_template(add_generation_prompt=True) does; llama2-chat \
        when it has none), llama2-chat ([INST] message [/INST] + suffix, the reference recipe), llama3, chatml, \
        mistral (built-in chat formats) or raw (text as given). The suffix follows the generation prompt.
        """, valueName: "name"))
    var template: PromptTemplate = .auto

    @Option(name: .long, help: ArgumentHelp("Text appended after the template (default for the chat templates: \"\(PromptTemplate.defaultSuffix)\"; for raw: none).", valueName: "text"))
    var suffix: String?

    @Option(name: .customLong("system-prompt"), help: ArgumentHelp("System prompt: a system message before the first user message (llama2-chat: <<SYS>>…<</SYS>>).", valueName: "text"))
    var systemPrompt: String?

    @Option(name: .long, help: ArgumentHelp("The date a chat template puts in the prompt: its date_string (e.g. \"26 Jul 2024\", Llama-3.x's \"Today Date\"), or YYYY-MM-DD: the day strftime_now formats (Llama-3.2; default today, recorded in the readout: pass the recorded day to resume an extraction on another day).", valueName: "date"))
    var date: String?

    var renderer: PromptRenderer {
        let (dateString, clockDay) = PromptRenderer.date(date)
        return PromptRenderer(template: template, suffix: suffix, systemPrompt: systemPrompt, dateString: dateString, clockDay: clockDay)
    }

    /// The renderer resolved against a loaded model (its chat template for auto), the note on stderr.
    func renderer(for m: LoadedModel) throws -> PromptRenderer {
        try Self.resolve(renderer, chat: m.chat, tokenizer: m.tokenizer)
    }

    static func resolve(_ r: PromptRenderer, chat: ModelChatInfo, tokenizer: Tokenizer) throws -> PromptRenderer {
        let (resolved, message) = try r.resolved(for: chat, tokenizer: tokenizer)
        if let message { note(message) }
        return resolved
    }

    func validate() throws {
        if template == .raw && systemPrompt != nil {
            throw ValidationError("--system-prompt needs a chat template (raw prompts are used as given)")
        }
        if date != nil && (template == .raw || template == .llama2Chat) {
            throw ValidationError("--date goes with a chat template (auto, llama3, chatml, mistral), not --template \(template.rawValue)")
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
