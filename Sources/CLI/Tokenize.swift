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
        SentencePiece over the text, with literal <s>, </s>, <unk> and the other control pieces mapped to their \
        special ids; for a tokenizer.json (byte-level BPE: Llama-3, Qwen2) the `tokenizers` library's encode with \
        special tokens. A chat template's render that contains the BOS text gets no second BOS (as \
        apply_chat_template(tokenize=True)).

        A multi-turn row is given with --messages as a JSON list of {"role", "content"} (as a JSONL row's \
        "messages"); the template renders it with the generation prompt, then the suffix.

        Examples:
          llamaprobe tokenize --tokenizer tokenizer.model --template raw --ids "Hello world"
          llamaprobe tokenize --model Llama-3.2-1B-Instruct --messages '[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":"How are you?"}]'
        """)

    @Option(help: ArgumentHelp("Model whose tokenizer to use: a checkpoint directory (its tokenizer.model, else tokenizer.json) or a GGUF file (its vocabulary).", valueName: "path"))
    var model: String?

    @Option(help: ArgumentHelp("A SentencePiece tokenizer.model or a Hugging Face tokenizer.json.", valueName: "file"))
    var tokenizer: String?

    @OptionGroup var templateOptions: TemplateOptions

    @Option(help: ArgumentHelp("A conversation instead of the text: a JSON list of {\"role\", \"content\"} objects.", valueName: "json"))
    var messages: String?

    @Flag(help: "Print only the ids, space-separated.")
    var ids = false

    @Argument(help: "The text (a user message for the chat templates).")
    var text: String?

    func validate() throws {
        if (model == nil) == (tokenizer == nil) { throw ValidationError("pass exactly one of --model PATH or --tokenizer FILE") }
        if (text == nil) == (messages == nil) { throw ValidationError("pass the text or --messages JSON (one of them)") }
    }

    func run() throws {
        let tok = try tokenizer.map { try Tokenizer(path: $0) } ?? LoadedModel.tokenizer(forModel: model!)
        var renderer = templateOptions.renderer
        if renderer.template.isJinja {
            // The chat template of the model, or of the directory holding --tokenizer (its tokenizer_config.json).
            let chat: ModelChatInfo
            if let model { chat = try LoadedModel.chatInfo(forModel: model) } else {
                let dir = ((tokenizer! as NSString).deletingLastPathComponent as String)
                let c = try TokenizerConfig.read(directory: dir.isEmpty ? "." : dir)
                chat = ModelChatInfo(template: c?.chatTemplate, bosToken: c?.bosToken, eosToken: c?.eosToken, source: tokenizer!)
            }
            renderer = try TemplateOptions.resolve(renderer, chat: chat, tokenizer: tok)
        }
        let rendered: String
        if let messages {
            let list: [ChatMessage]
            do { list = try JSONDecoder().decode([ChatMessage].self, from: Data(messages.utf8)) } catch {
                throw ValidationError("--messages must be a JSON list of {\"role\": …, \"content\": …} objects: \(error.localizedDescription)")
            }
            guard !list.isEmpty else { throw ValidationError("--messages is an empty list") }
            rendered = try renderer.render(messages: list)
        } else {
            rendered = try renderer.render(text!)
        }
        let tokens = try tok.encode(rendered, addBOS: renderer.addsBOS(to: rendered))
        if ids {
            print(tokens.map(String.init).joined(separator: " "))
            return
        }
        print("template: \(renderer.template.rawValue)" + (renderer.chat.map { " (sha256 \($0.template.sha256.prefix(12))…" + ($0.dateString.map { ", date \($0)" } ?? "") + ($0.today.map { ", today \($0)" } ?? "") + ")" } ?? ""))
        print("prompt: \(jsonString(rendered))")
        print("tokens: \(tokens.count)")
        for id in tokens { print("\(id)\t\(tok.piece(id))") }
    }
}
