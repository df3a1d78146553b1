import ArgumentParser
import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run trained probes on new messages: class probabilities per message.",
        discussion: """
        Reads each message with the readout recipe recorded with the probes (template, suffix, system prompt, \
        token budget, tokenizer, the hook point and position read: train --hook, extract --position; a flag that \
        contradicts it is refused unless --override-readout) and the forward pass of extraction, then the chosen \
        layer's probe (Linear + \
        sigmoid; one-vs-rest probabilities that need not sum to 1). The best layer is the one with the highest \
        validation accuracy in training. Probes whose d_model or layers do not fit the model are refused, and so are \
        probes trained on another checkpoint (model fingerprint; --allow-other-model uses them with a warning).

        --steer-… runs the model with interventions, as `generate` does (A·v/‖v‖ added to the output of block L \
        at every position): how a direction written at one block moves what the probes read (docs/steering.md).

        Examples:
          llamaprobe predict --model model.Q8_0.gguf --probes probes/ "I just got the job!" "My cat died."
          llamaprobe predict --model model.Q8_0.gguf --probes probes/ --layer all --json --data messages.csv
          llamaprobe predict --model model.Q8_0.gguf --probes probes/ --steer-probes probes/ --steer-class happy --steer-layer 1 --steer-strength 8 "My cat died."
        """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: ArgumentHelp("The output directory of `llamaprobe train` (probes.safetensors, or probe_at_layer_*.pth).", valueName: "dir"))
    var probes: String

    @Option(help: ArgumentHelp("Which probe: best (highest validation accuracy), a layer number, or all.", valueName: "best|N|all"))
    var layer = "best"

    @OptionGroup var readoutOptions: ReadoutOptions

    @OptionGroup var steer: SteerOptions

    @Option(help: ArgumentHelp("Read messages from a CSV (message column) or JSONL file instead of the arguments.", valueName: "file"))
    var data: String?

    @Option(help: ArgumentHelp("With --data: the CSV field separator, one character or tab (default: tab for .tsv/.tab files, else a comma).", valueName: "char"))
    var delimiter: String?

    @Option(name: .customLong("text-column"), help: "With --data: the CSV column (or JSONL key) holding the message.")
    var textColumn = "message"

    @Option(name: .customLong("label-column"), help: ArgumentHelp("With --data: the CSV column (or JSONL key) holding each message's true label; then every label must be one of the probes' labels and the accuracy per layer is printed, e.g. --label-column label.", valueName: "name"))
    var labelColumn: String?

    @Option(help: ArgumentHelp("Class names in id order: names the outputs of .pth probes (which record none; default for 7 outputs: the reference recipe's seven states) or must equal the probes' recorded label set, e.g. --labels very_happy,happy,slightly_positive,neutral,slightly_negative,sad,very_sad.", valueName: "a,b,…"))
    var labels: String?

    @Flag(help: "Print one JSON object per message (with --label-column, then one {\"accuracy\": [{layer, accuracy, correct, total}]} object).")
    var json = false

    @Argument(help: "Messages to classify.")
    var messages: [String] = []

    func validate() throws {
        if messages.isEmpty == (data == nil) { throw ValidationError("pass messages as arguments or --data FILE (one of them)") }
        if layer != "best" && layer != "all" && Int(layer) == nil { throw ValidationError("--layer must be best, all or a layer number") }
        if labelColumn != nil && data == nil { throw ValidationError("--label-column needs --data FILE") }
        if let d = delimiter, Dataset.delimiter(named: d) == nil {
            throw ValidationError("--delimiter must be one character (not a quote or line break) or tab, not '\(d)'")
        }
    }

    func run() throws {
        var set = try ProbeSet.load(directory: probes)
        if let labels { try set.useLabels(labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }
        let m = try modelOptions.load()
        try set.check(against: m.config)
        let (readout, warnings) = try Predictor.readout(probes: set, flags: readoutOptions.flags, tokenizer: m.tokenizer, chat: m.chat)
        for w in try Predictor.checkModel(m, probes: set, allowOther: readoutOptions.allowOtherModel) + warnings {
            FileHandle.standardError.write(Data((w + "\n").utf8))
        }
        let steering = try steer.steering(for: m)
        if readout.steering != steering.records {
            func describe(_ s: [ReadoutRecipe.SteeringRecord]?) -> String {
                s.map { "steered (\($0.map { "block \($0.layer) += \($0.strength)·v, v = \($0.source)" }.joined(separator: "; ")))" } ?? "unsteered"
            }
            note("warning: the probes were trained on \(describe(readout.steering)) residuals; this run reads \(describe(steering.records)) ones")
        }
        let layers: [Int]
        switch layer {
        case "best":
            guard let best = set.bestLayer else {
                throw CLIError("the probes in \(probes) do not say which layer is best (.pth files without a probe_training_metrics.csv naming 'layer' and 'best_accuracy'); pass --layer N (trained layers: \(set.probes.keys.sorted().map(String.init).joined(separator: ", "))) or --layer all")
            }
            layers = [best]
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
        var truth: [String]? = nil   // true labels, with --label-column
        if let data {
            let d = try Dataset(path: data, textColumn: textColumn, labelColumn: labelColumn,
                                delimiter: delimiter.flatMap(Dataset.delimiter(named:)))
            contents = []; texts = []
            var labelled: [(row: Int, label: String)] = []
            for r in d.rows {
                let row = try r.get()
                contents.append(row.content)
                labelled.append((row.index, row.label))
                if case .message(let t) = row.content { texts.append(t) } else { texts.append("<conversation>") }
            }
            if labelColumn != nil {
                try Predictor.checkLabels(labelled, file: data, probes: set)
                truth = labelled.map(\.label)
            }
        }
        let results = try Predictor.run(model: m, probes: set, readout: readout, messages: contents, layers: layers, steering: steering)
        func top(_ p: [Float]) -> String { set.labels[p.indices.max { p[$0] < p[$1] }!] }   // first maximum on ties, as training
        for (i, (text, r)) in zip(texts, results).enumerated() {
            if json {
                let perLayer = layers.map { l -> String in
                    let p = r[l]!
                    let probs = zip(set.labels, p).map { "\(jsonString($0)):\(String(format: "%.6f", $1))" }.joined(separator: ",")
                    return "{\"layer\":\(l),\"prediction\":\(jsonString(top(p))),\"probabilities\":{\(probs)}}"
                }
                let label = truth.map { ",\"label\":" + jsonString($0[i]) } ?? ""
                print("{\"message\":\(jsonString(text))\(label),\"layers\":[\(perLayer.joined(separator: ","))]}")
                continue
            }
            print(truth.map { "\(text)   (label: \($0[i]))" } ?? text)
            for l in layers {
                let p = r[l]!
                let order = p.indices.sorted { p[$0] > p[$1] }
                let shown = order.map { String(format: "%@ %.3f", set.labels[$0], p[$0]) }.joined(separator: "  ")
                print("  layer \(l)\(l == set.bestLayer ? " (best)" : ""): \(top(p))   [\(shown)]")
            }
        }
        if let truth {
            // to stderr with --json, so stdout stays one JSON object per line
            var summary = ""
            for l in layers {
                let correct = zip(results, truth).filter { top($0[l]!) == $1 }.count
                summary += String(format: "layer %d%@: accuracy %.4f (%d of %d labelled messages)\n", l, l == set.bestLayer ? " (best)" : "",
                                  Double(correct) / Double(max(1, truth.count)), correct, truth.count)
            }
            if json {
                // stdout: one more object, the accuracy per layer; stderr: the same in words
                let entries = layers.map { l -> String in
                    let correct = zip(results, truth).filter { top($0[l]!) == $1 }.count
                    return "{\"layer\":\(l),\"accuracy\":\(String(format: "%.6f", Double(correct) / Double(max(1, truth.count)))),\"correct\":\(correct),\"total\":\(truth.count)\(l == set.bestLayer ? ",\"best\":true" : "")}"
                }
                print("{\"accuracy\":[\(entries.joined(separator: ","))]}")
                FileHandle.standardError.write(Data(summary.utf8))
            } else { print(summary, terminator: "") }
        }
    }
}
