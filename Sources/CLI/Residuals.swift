import ArgumentParser
import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats

struct Residuals: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Capture the residual stream after every layer for a file of prompts.",
        discussion: """
        PROMPTS has one prompt per line; \\n, \\t and \\\\ are escapes, lines are not stripped. The output \
        safetensors file holds, for prompt i: p{i}.tokens (I64 [T]), p{i}.resid_post (F32 [layers, d] for \
        --positions last, [layers, T, d] for all), and with the flags p{i}.embed and p{i}.logits_last. \
        resid_post of layer L is the residual after block L, before the final norm (TransformerLens naming; \
        Hugging Face's last hidden_states entry is normed and is not it).

        --hooks reads other points of every block, by TransformerLens name, one tensor p{i}.{hook} each (same shape \
        as resid_post): resid_pre (the residual entering block L: the embedding, or resid_post of L-1), attn_out \
        (o_proj's output), resid_mid (resid_pre + attn_out, the input of the MLP's norm), mlp_out (down_proj's \
        output, before steering), resid_post (the default). Several in one pass: --hooks resid_post,mlp_out. Reading \
        attn_out or mlp_out costs one more o_proj or down_proj product per block (computed apart, so no other value \
        changes by a bit).

        --steer-… adds interventions as in `generate` (A·v/‖v‖ at the output of block L, every position); the \
        stored residuals are the steered ones, and the interventions are recorded in the readout (metadata \
        'readout', key 'steering'), so a steered file says so.

        Example: llamaprobe residuals --model models/tiny --prompts prompts.txt --out resid.safetensors
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: ArgumentHelp("Prompts file, one per line.", valueName: "file"))
    var prompts: String

    @Option(help: ArgumentHelp("Output .safetensors file (written atomically).", valueName: "file"))
    var out: String

    @OptionGroup var templateOptions: TemplateOptions

    @Option(help: "Positions to keep: last (the readout token) or all.")
    var positions: Positions = .last

    @Option(help: ArgumentHelp("Block hooks to store, comma-separated: resid_pre, attn_out, resid_mid, mlp_out, resid_post.",
                               valueName: "names"))
    var hooks = "resid_post"

    @Flag(name: .customLong("with-embeddings"), help: "Also store the embedding output (HF hidden_states[0]) as p{i}.embed.")
    var withEmbeddings = false

    @Flag(help: "Also store the last position's logits as p{i}.logits_last.")
    var logits = false

    @OptionGroup var steer: SteerOptions

    func run() throws {
        let hookList = try Hook.parseList(hooks)
        let list = try PromptFile.read(path: prompts)
        guard !list.isEmpty else { throw CLIError("\(prompts) has no prompts") }
        let t0 = now()
        let loaded = try modelOptions.load(includeHead: logits)
        note("loaded \(modelOptions.model) (\(loaded.config.summary)) in \(formatSeconds(now() - t0))")
        let t1 = now()
        var tokens = 0
        var lastNote = t1
        // The readout recipe of extract (no truncation: every token of the prompt is kept), recorded in the file.
        let renderer = try templateOptions.renderer(for: loaded)
        var recipe = ReadoutRecipe(renderer: renderer, maxTokens: 1 << 30, withEmbeddings: withEmbeddings,
                                   tokenizer: loaded.tokenizer)
        // Steered residuals say so: the interventions are part of the recorded readout.
        let steering = try steer.steering(for: loaded)
        recipe.steering = steering.records
        if hookList != [.residPost] { recipe.hooks = hookList.map(\.rawValue) }   // the hooks stored, as extract records them
        for iv in steering.interventions { note("steering: block \(iv.layer) += \(iv.strength) · v/‖v‖, v = \(iv.source)") }
        try ResidualsJob.run(model: loaded, prompts: list, renderer: renderer,
                             options: CaptureOptions(positions: positions, embeddings: withEmbeddings, logits: logits, hooks: hookList),
                             outPath: out, readout: (recipe.json, { try recipe.tokens(.message($0), tokenizer: loaded.tokenizer, renderer: renderer).ids }),
                             steering: steering) { done, total, t in
            tokens += t
            let dt = now() - t1
            if now() - lastNote >= 1 || done == total {
                let eta = dt / Double(done) * Double(total - done)
                note(String(format: "[%d/%d] %d tokens, %.1f tokens/s, ETA %.0f s", done, total, tokens,
                            Double(tokens) / max(dt, 1e-9), eta))
                lastNote = now()
            }
        }
        let dt = now() - t1
        note(String(format: "%d prompts, %d tokens in %.2f s (%.1f tokens/s) -> %@", list.count, tokens, dt,
                    Double(tokens) / max(dt, 1e-9), out))
    }
}

/// What `--template auto` does with a checkpoint: its template (sha256), or llama2-chat, or why it cannot render.
func chatTemplateLine(_ chat: ModelChatInfo, tokenizer: Tokenizer) throws -> String {
    guard let source = chat.template else { return "chat template: none (--template auto uses llama2-chat)" }
    let sha = (try? ChatTemplate(name: "checkpoint", source: source).sha256).map { "sha256 \($0.prefix(12))…" } ?? "\(source.utf8.count) bytes"
    do {
        _ = try PromptRenderer(template: .auto).resolved(for: chat, tokenizer: tokenizer)
        return "chat template: \(chat.source) (\(sha)), rendered by --template auto"
    } catch {
        return "chat template: \(chat.source) (\(sha)) cannot be rendered: \(error.localizedDescription)"
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a checkpoint (Hugging Face directory or GGUF file) and print its configuration and tensors.",
        discussion: "Examples:\n  llamaprobe info --model models/tiny\n  llamaprobe info --model model.q8_0.gguf")

    @Option(help: ArgumentHelp("A GGUF file or a Hugging Face checkpoint directory.", valueName: "path"))
    var model: String

    func run() throws {
        guard FileManager.default.fileExists(atPath: model) else {
            throw CLIError("\(model): does not exist (expected a Hugging Face checkpoint directory or a .gguf file)")
        }
        if !Files.isDirectory(model) {
            let g = try GGUFFile(path: model)
            let config = try GGUFModel.config(g)
            print("config: \(config.summary)")
            let tok = try Tokenizer.fromGGUF(g)
            print("tokenizer: \(model): \(tok.bpe == nil ? "SentencePiece" : "byte-level BPE"), \(tok.vocabSize) tokens")
            var types: [String: Int] = [:]
            for t in g.tensors.values { types[t.type.name, default: 0] += 1 }
            let bytes = g.tensors.values.reduce(0) { $0 + $1.byteCount }
            print("storage: GGUF version \(g.version), \(g.tensors.count) tensors (\(types.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))), \(bytes) bytes")
            let missing = GGUFModel.expectedTensors(config).map(\.name).filter { g.tensors[$0] == nil }
            if !missing.isEmpty {
                throw CLIError("\(model): \(missing.count) tensor(s) a LLaMA model needs are missing, e.g. \(missing.prefix(3).joined(separator: ", "))")
            }
            print(try chatTemplateLine(try LoadedModel.chatInfo(forModel: model), tokenizer: tok))
            return
        }
        let ck = try HFCheckpoint(directory: model)
        print("config: \(ck.config.summary)")
        // A directory is valid only with a tokenizer that loads and fits the embedding rows.
        let tok = try LoadedModel.tokenizer(forModel: model)
        guard tok.vocabSize <= ck.config.vocabSize else {
            throw CLIError("\(tok.source): has \(tok.vocabSize) tokens but the model's vocab_size is \(ck.config.vocabSize)")
        }
        print("tokenizer: \(tok.source): \(tok.bpe == nil ? "SentencePiece" : "byte-level BPE"), \(tok.vocabSize) tokens")
        print(try chatTemplateLine(try LoadedModel.chatInfo(forModel: model), tokenizer: tok))
        print("storage: \(ck.config.storageDtype ?? "unspecified"), \(ck.files.count) safetensors file(s)")
        for f in ck.files {
            let bytes = f.tensors.values.reduce(0) { $0 + $1.byteCount }
            print("  \(f.path): \(f.tensors.count) tensors, \(bytes) bytes")
        }
    }
}
