import ArgumentParser
import Foundation
import Model
import Quant
import Formats

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text with a KV cache, optionally steering the residual stream along a direction.",
        discussion: """
        The prompt goes through the batched forward pass once (prefill); then each new token runs alone \
        against the cached keys and values. Greedy by default (the highest logit, as transformers' \
        generate(do_sample=False)); --temperature samples, --top-p restricts sampling to the nucleus, and \
        --seed makes it reproducible. Stops at the model's EOS id(s) or after --max-new-tokens.

        The prompt is the text in the template (llama2-chat renders the user turn so that the model \
        continues with the assistant's answer), with no readout suffix unless --suffix is given.

        Steering adds A·v/‖v‖ to the output of block L (TransformerLens blocks.L.hook_resid_post, the \
        `residuals` observation point) at every position, prompt and generated alike: --steer-vector \
        FILE.safetensors[:KEY] --steer-layer L --steer-strength A, or --steer-probes DIR --steer-class NAME \
        (the weight row of that class, at --steer-layer L or the probes' best layer). Several may be given.

        Output: the text as it is generated (default), only the generated ids (--ids), or the check output \
        (--margins: prompt ids, generated ids, each token's logit margin over the runner-up, text, bytes).

        Examples:
          llamaprobe generate --model model.gguf --template raw --max-new-tokens 32 "Once upon a time"
          llamaprobe generate --model demo-run/model --steer-probes demo-run/probes --steer-class joy --steer-strength 8 "How was your day?"
          llamaprobe generate --model model.gguf --temperature 0.8 --top-p 0.95 --seed 7 "Hello"
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: ArgumentHelp("Prompt template: auto (the checkpoint's own chat template; llama2-chat when it has none), llama2-chat ([INST] message [/INST]), llama3, chatml, mistral or raw (text as given).", valueName: "name"))
    var template: PromptTemplate = .auto

    @Option(name: .long, help: ArgumentHelp("Text appended after the template (default: none).", valueName: "text"))
    var suffix: String?

    @Option(name: .customLong("system-prompt"), help: ArgumentHelp("System prompt: a system message before the message (llama2-chat: <<SYS>>…<</SYS>>).", valueName: "text"))
    var systemPrompt: String?

    @Option(name: .long, help: ArgumentHelp("The date a chat template puts in the prompt: its date_string (e.g. \"26 Jul 2024\") or YYYY-MM-DD (the day strftime_now formats); default: the template's own.", valueName: "date"))
    var date: String?

    @Option(name: [.customLong("max-new-tokens"), .customLong("count")], help: ArgumentHelp("Most tokens to generate (EOS stops earlier).", valueName: "n"))
    var maxNewTokens: Int = 64

    @Option(help: ArgumentHelp("Sampling temperature; 0 (the default) is greedy.", valueName: "t"))
    var temperature: Float = 0

    @Option(name: .customLong("top-p"), help: ArgumentHelp("With --temperature: sample only from the most probable tokens whose probabilities sum to p.", valueName: "p"))
    var topP: Float = 1

    @Option(help: ArgumentHelp("With --temperature: seed of the sampler (the same seed gives the same tokens; default: random, printed on stderr).", valueName: "n"))
    var seed: UInt64?

    @Flag(help: "Print only the generated token ids, space-separated, on one line.")
    var ids = false

    @Flag(help: "Print the check output: prompt ids, generated ids, logit margins, text and bytes.")
    var margins = false

    @OptionGroup var steer: SteerOptions

    @Argument(help: "The prompt text.")
    var text: String

    /// The prompt as rendered: the template with `--suffix` (nothing by default).
    var renderer: PromptRenderer {
        let (dateString, clockDay) = PromptRenderer.date(date)
        return PromptRenderer(template: template, suffix: suffix ?? "", systemPrompt: systemPrompt, dateString: dateString, clockDay: clockDay)
    }

    func validate() throws {
        if template == .raw && systemPrompt != nil {
            throw ValidationError("--system-prompt needs a chat template (raw prompts are used as given)")
        }
        if date != nil && (template == .raw || template == .llama2Chat) {
            throw ValidationError("--date goes with a chat template (auto, llama3, chatml, mistral), not --template \(template.rawValue)")
        }
        if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be at least 1") }
        if !(temperature >= 0) || !temperature.isFinite { throw ValidationError("--temperature must be a finite number ≥ 0") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
        if temperature == 0 && (topP != 1 || seed != nil) {
            throw ValidationError("--top-p and --seed go with --temperature T > 0 (without it decoding is greedy)")
        }
        if ids && margins { throw ValidationError("--ids and --margins are two output formats; pick one") }
    }

    func run() throws {
        let m = try modelOptions.load(includeHead: true)
        let steering = try steer.steering(for: m)
        let r = try TemplateOptions.resolve(renderer, chat: m.chat, tokenizer: m.tokenizer)
        let rendered = try r.render(text)
        let prompt = try m.tokenizer.encode(rendered, addBOS: r.addsBOS(to: rendered))
        var sampling = Sampling.greedy
        if temperature > 0 {
            let s = seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
            if seed == nil { note("sampling seed \(s) (pass --seed \(s) to repeat)") }
            sampling = .sample(temperature: temperature, topP: topP, seed: s)
        }
        for iv in steering.interventions {
            note("steering: block \(iv.layer) += \(iv.strength) · v/‖v‖, v = \(iv.source)")
        }
        let stop = Set(([m.tokenizer.eosID] + (m.config.eosTokenId?.all ?? []).compactMap { Int32(exactly: $0) }).filter { $0 >= 0 })
        let stream = !ids && !margins
        let out = FileHandle.standardOutput
        let gen = try m.model.generate(prompt, maxNewTokens: maxNewTokens, stop: stop, sampling: sampling, steering: steering) { t in
            if stream { out.write(Data(m.tokenizer.pieceBytes(t.id))) }
        }
        let generated = gen.map(\.id)
        if stream {
            out.write(Data("\n".utf8))
        } else if ids {
            print(generated.map(String.init).joined(separator: " "))
        } else {
            print("prompt: \(prompt.map(String.init).joined(separator: " "))")
            print("generated: \(generated.map(String.init).joined(separator: " "))")
            print("margins: " + gen.map { String(format: "%.4f", $0.margin) }.joined(separator: " "))
            print("text: \(jsonString(try m.tokenizer.decode(generated)))")
            // The bytes of the pieces, as llama.cpp prints them (invalid UTF-8 kept as \xNN).
            let bytes = generated.flatMap { m.tokenizer.pieceBytes($0) }
            print("bytes: " + bytes.map { $0 >= 0x20 && $0 < 0x7F && $0 != 0x5C ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined())
        }
    }
}
