import ArgumentParser
import Foundation
import Model
import Quant
import Formats

extension Quantizer.OutputType: ExpressibleByArgument {}

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Convert a Hugging Face LLaMA checkpoint to an int8 (Q8_0) or f16 GGUF file.",
        discussion: """
        Streams tensor by tensor (memory stays bounded for any model size), writes OUT under a temporary \
        name and renames it when complete. Q/K rows are permuted into the interleaved rotary layout, as \
        llama.cpp's converter does, so llama.cpp loads the file; tensors whose rows are not a multiple of 32 \
        stay F16; norms stay F32. The tokenizer (tokenizer.model, or tokenizer.json) is embedded as the GGUF vocabulary.

        Example: llamaprobe quantize --model ~/models/Llama-2-13b-chat-hf --out llama-2-13b-chat.Q8_0.gguf
        """)

    @Option(help: ArgumentHelp("Hugging Face checkpoint directory.", valueName: "dir"))
    var model: String

    @Option(help: ArgumentHelp("Output .gguf file.", valueName: "file"))
    var out: String

    @Option(help: "Weight type: q8_0 (int8, 1.06 bytes per weight) or f16.")
    var type: Quantizer.OutputType = .q8_0

    @Option(help: ArgumentHelp("Tokenizer to embed (default: MODEL/tokenizer.model, else MODEL/tokenizer.json).", valueName: "file"))
    var tokenizer: String?

    @Option(help: "Threads (the default is this machine's core count).")
    var threads: Int = ThreadPool.defaultThreadCount

    func run() throws {
        let t0 = now()
        let ck = try HFCheckpoint(directory: model)
        let tokPath = try tokenizer ?? LoadedModel.tokenizerFile(inDirectory: model)
        let tok = try Tokenizer(path: tokPath)
        guard tok.vocabSize <= ck.config.vocabSize else {
            throw CLIError("\(tokPath) has \(tok.vocabSize) tokens, more than vocab_size \(ck.config.vocabSize)")
        }
        var last = 0.0
        try Quantizer.run(checkpoint: ck, tokenizer: tok, outPath: out, type: type,
                          pool: ThreadPool(threads: threads)) { p in
            if now() - last > 1 || p.index == p.count {
                let pct = p.bytesTotal > 0 ? 100 * Double(p.bytesDone) / Double(p.bytesTotal) : 100
                note(String(format: "[%d/%d] %5.1f%% %@", p.index, p.count, pct, p.tensor))
                last = now()
            }
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        note(String(format: "wrote %@ (%.1f MB, %@) in %.1f s", out, Double(size) / 1e6, type.rawValue, now() - t0))
    }
}
