import ArgumentParser
import Extraction
import Foundation
import Model
import Probe
import Quant

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run trained probes on new messages: class probabilities per message.",
        discussion: """
        Uses the same template and forward pass as extraction, then the chosen layer's probe (Linear + \
        sigmoid; one-vs-rest probabilities that need not sum to 1). The best layer is the one with the highest \
        validation accuracy in training. Probes whose d_model or layers do not fit the model are refused.

        Examples:
          llamaprobe predict --model model.Q8_0.gguf --probes probes/ "I just got the job!" "My cat died."
          llamaprobe predict --model model.Q8_0.gguf --probes probes/ --layer all --json --data messages.csv
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: ArgumentHelp("The output directory of `llamaprobe train` (probes.safetensors, or probe_at_layer_*.pth).", valueName: "dir"))
    var probes: String

    @Option(help: ArgumentHelp("Which probe: best (highest validation accuracy), a layer number, or all.", valueName: "best|N|all"))
    var layer = "best"

    @OptionGroup var templateOptions: TemplateOptions

    @Option(name: .customLong("max-tokens"), help: "Truncate longer prompts as extraction does (from the start of the content).")
    var maxTokens = 2048

    @Option(help: ArgumentHelp("Read messages from a CSV (message column) or JSONL file instead of the arguments.", valueName: "file"))
    var data: String?

    @Option(name: .customLong("text-column"), help: "With --data: the CSV column (or JSONL key) holding the message.")
    var textColumn = "message"

    @Flag(help: "Print one JSON object per message.")
    var json = false

    @Argument(help: "Messages to classify.")
    var messages: [String] = []

    func validate() throws {
        if messages.isEmpty == (data == nil) { throw ValidationError("pass messages as arguments or --data FILE (one of them)") }
        if layer != "best" && layer != "all" && Int(layer) == nil { throw ValidationError("--layer must be best, all or a layer number") }
    }

    func run() throws {
        let set = try ProbeSet.load(directory: probes)
        let m = try modelOptions.load()
        try set.check(against: m.config)
        let layers: [Int]
        switch layer {
        case "best": layers = [set.bestLayer]
        case "all": layers = set.probes.keys.sorted()
        default:
            let n = Int(layer)!
            guard set.probes[n] != nil else {
                throw CLIError("no probe for layer \(n); trained layers: \(set.probes.keys.sorted().map(String.init).joined(separator: ", "))")
            }
            layers = [n]
        }
        var texts: [String] = messages
        var contents: [DatasetRow.Content] = messages.map { .message($0) }
        if let data {
            let d = try Dataset(path: data, textColumn: textColumn, labelColumn: textColumn)
            contents = []; texts = []
            for r in d.rows {
                let row = try r.get()
                contents.append(row.content)
                if case .message(let t) = row.content { texts.append(t) } else { texts.append("<conversation>") }
            }
        }
        let results = try Predictor.run(model: m, probes: set, renderer: templateOptions.renderer, maxTokens: maxTokens,
                                        messages: contents, layers: layers)
        for (text, r) in zip(texts, results) {
            if json {
                let perLayer = layers.map { l -> String in
                    let p = r[l]!
                    let probs = zip(set.labels, p).map { "\(jsonString($0)):\(String(format: "%.6f", $1))" }.joined(separator: ",")
                    let top = set.labels[p.indices.max { p[$0] < p[$1] }!]
                    return "{\"layer\":\(l),\"prediction\":\(jsonString(top)),\"probabilities\":{\(probs)}}"
                }
                print("{\"message\":\(jsonString(text)),\"layers\":[\(perLayer.joined(separator: ","))]}")
                continue
            }
            print(text)
            for l in layers {
                let p = r[l]!
                let order = p.indices.sorted { p[$0] > p[$1] }
                let shown = order.map { String(format: "%@ %.3f", set.labels[$0], p[$0]) }.joined(separator: "  ")
                print("  layer \(l)\(l == set.bestLayer ? " (best)" : ""): \(set.labels[order[0]])   [\(shown)]")
            }
        }
    }
}
