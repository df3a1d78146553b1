import ArgumentParser
import Foundation
import Model
import Quant
import Formats

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Greedy-decode a few tokens: a quick check that a model loads and computes correctly.",
        discussion: """
        Prints the prompt's token ids, the generated ids, each one's logit margin over the runner-up (a \
        small margin is where another implementation may legitimately pick differently) and their text \
        and bytes. Stops at EOS. Recomputes the whole sequence per \
        token (no KV cache): meant for checks against other implementations, not for chatting.

        The prompt is the text in the template, with no readout suffix unless --suffix is given (the emotion \
        suffix of `extract` would make the model continue a sentiment judgement, not the text).

        Example: llamaprobe generate --model model.gguf --template raw --count 16 "Once upon a time"
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "Prompt template: llama2-chat ([INST] message [/INST]) or raw (text as given).")
    var template: PromptTemplate = .llama2Chat

    @Option(name: .long, help: ArgumentHelp("Text appended after the template (default: none).", valueName: "text"))
    var suffix: String?

    @Option(name: .customLong("system-prompt"), help: ArgumentHelp("System prompt, rendered as <<SYS>>…<</SYS>> before the message (llama2-chat).", valueName: "text"))
    var systemPrompt: String?

    /// The prompt as rendered: the template with `--suffix` (nothing by default).
    var renderer: PromptRenderer { PromptRenderer(template: template, suffix: suffix ?? "", systemPrompt: systemPrompt) }

    func validate() throws {
        if template == .raw && systemPrompt != nil {
            throw ValidationError("--system-prompt needs --template llama2-chat (raw prompts are used as given)")
        }
    }

    @Option(help: "Number of tokens to generate.")
    var count: Int = 16

    @Argument(help: "The prompt text.")
    var text: String

    func run() throws {
        let m = try modelOptions.load(includeHead: true)
        let ids = try m.tokenizer.encode(renderer.render(text))
        let gen = try m.model.generateGreedy(ids, count: count, stopAt: m.tokenizer.eosID)
        let out = gen.map(\.id)
        print("prompt: \(ids.map(String.init).joined(separator: " "))")
        print("generated: \(out.map(String.init).joined(separator: " "))")
        print("margins: " + gen.map { String(format: "%.4f", $0.margin) }.joined(separator: " "))
        print("text: \(jsonString(try m.tokenizer.decode(out)))")
        // The bytes of the pieces, as llama.cpp prints them (invalid UTF-8 kept as \xNN).
        let bytes = out.flatMap { m.tokenizer.pieceBytes($0) }
        print("bytes: " + bytes.map { $0 >= 0x20 && $0 < 0x7F && $0 != 0x5C ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined())
    }
}
