import ArgumentParser
import Foundation
import Model
import Quant
import Formats

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the token ids (and pieces) of a prompt after the template.",
        discussion: """
        Ids equal Hugging Face's: for a SentencePiece tokenizer.model its LlamaTokenizer (legacy mode): BOS, then \
        SentencePiece over the text, with literal <s>, </s> and <unk> mapped to their special ids; for a \
        tokenizer.json (byte-level BPE: Llama-3, Qwen2) the `tokenizers` library's encode with special tokens.

        Example: llamaprobe tokenize --tokenizer tokenizer.model --template raw --ids "Hello world"
        """)

    @Option(help: ArgumentHelp("Model whose tokenizer to use: a checkpoint directory (its tokenizer.model, else tokenizer.json) or a GGUF file (its vocabulary).", valueName: "path"))
    var model: String?

    @Option(help: ArgumentHelp("A SentencePiece tokenizer.model or a Hugging Face tokenizer.json.", valueName: "file"))
    var tokenizer: String?

    @OptionGroup var templateOptions: TemplateOptions

    @Flag(help: "Print only the ids, space-separated.")
    var ids = false

    @Argument(help: "The text (a user message for llama2-chat).")
    var text: String

    func validate() throws {
        if (model == nil) == (tokenizer == nil) { throw ValidationError("pass exactly one of --model PATH or --tokenizer FILE") }
    }

    func run() throws {
        let tok = try tokenizer.map { try Tokenizer(path: $0) } ?? LoadedModel.tokenizer(forModel: model!)
        let rendered = templateOptions.renderer.render(text)
        let tokens = try tok.encode(rendered)
        if ids {
            print(tokens.map(String.init).joined(separator: " "))
            return
        }
        print("prompt: \(jsonString(rendered))")
        print("tokens: \(tokens.count)")
        for id in tokens { print("\(id)\t\(tok.piece(id))") }
    }
}
