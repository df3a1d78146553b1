import Foundation
import Model
import Probe
import Quant
import Formats

extension ProbeSet {
    /// Refuses probes that cannot apply to this model, naming the mismatch.
    public func check(against c: LlamaConfig) throws {
        try check(hiddenSize: c.hiddenSize, layers: c.numHiddenLayers)
    }
}

/// `llamaprobe predict`: the probes' readout recipe and the forward pass of extraction, then the probes.
public enum Predictor {
    /// Refuses labelled rows whose label the probes do not know, naming the file, row and label.
    public static func checkLabels(_ labels: [(row: Int, label: String)], file: String, probes: ProbeSet) throws {
        let known = Set(probes.labels)
        if let bad = labels.first(where: { !known.contains($0.label) }) {
            throw ExtractionError("\(file) (row \(bad.row)): label '\(bad.label)' is not one of the probes' labels "
                + "(\(probes.labels.joined(separator: ","))): the probes were trained on another label set")
        }
    }

    /// For each message, layer -> class probabilities for the requested layers.
    public static func run(model m: LoadedModel, probes: ProbeSet, readout: ReadoutRecipe,
                           messages: [DatasetRow.Content], layers: [Int], steering: Steering = .none) throws -> [[Int: [Float]]] {
        try probes.check(against: m.config)
        let renderer = try readout.renderer(for: m.chat, tokenizer: m.tokenizer)
        return try messages.map { content in
            let ids = try readout.tokens(content, tokenizer: m.tokenizer, renderer: renderer).ids
            var out: [Int: [Float]] = [:]
            let wanted = Set(layers)
            try m.model.forward(ids, positions: .last, steering: steering) { point, view in
                let index: Int
                switch point {
                case .embedding: guard probes.withEmbeddings else { return }; index = 0
                case .residPost(let l): index = l + (probes.withEmbeddings ? 1 : 0)
                default: return   // only resid_post is requested
                }
                if wanted.contains(index) { out[index] = probes.probabilities(layer: index, residual: view.row(position: ids.count - 1)) }
            }
            return out
        }
    }
}
