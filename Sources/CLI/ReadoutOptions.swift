import ArgumentParser
import Extraction
import Model

/// predict's readout flags: by default the recipe recorded with the probes is used; a flag that
/// contradicts it is refused unless --override-readout.
struct ReadoutOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Prompt template (default: the one the probes were trained with): auto, llama2-chat, llama3, chatml, mistral or raw.", valueName: "name"))
    var template: PromptTemplate?

    @Option(name: .long, help: ArgumentHelp("Readout suffix after the template (default: the probes' recorded one).", valueName: "text"))
    var suffix: String?

    @Option(name: .customLong("system-prompt"), help: ArgumentHelp("System prompt (default: the probes' recorded one).", valueName: "text"))
    var systemPrompt: String?

    @Option(name: .customLong("max-tokens"), help: ArgumentHelp("Token budget; longer prompts lose tokens from the start of the content (default: the probes' recorded one).", valueName: "n"))
    var maxTokens: Int?

    @Flag(name: .customLong("override-readout"), help: "Use the readout flags even where they contradict the readout recorded with the probes (a warning is printed).")
    var overrideReadout = false

    @Flag(name: .customLong("allow-other-model"), help: "Use probes trained on another checkpoint (another model fingerprint) with a warning instead of refusing.")
    var allowOtherModel = false

    func validate() throws {
        if let m = maxTokens, m < 8 { throw ValidationError("--max-tokens must be at least 8") }
        if template == .raw && systemPrompt != nil {
            throw ValidationError("--system-prompt needs a chat template (raw prompts are used as given)")
        }
    }

    var flags: ReadoutFlags {
        ReadoutFlags(template: template?.rawValue, suffix: suffix, systemPrompt: systemPrompt, maxTokens: maxTokens, override: overrideReadout)
    }
}
