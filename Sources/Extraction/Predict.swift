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
        let hook = try readout.probeHook
        let renderer = try readout.renderer(for: m.chat, tokenizer: m.tokenizer)
        var buffer = [Float](repeating: 0, count: m.config.hiddenSize)
        return try messages.map { content in
            let p = try readout.prompt(content, tokenizer: m.tokenizer, renderer: renderer)
            var out: [Int: [Float]] = [:]
            let wanted = Set(layers)
            try m.model.forward(p.ids, positions: readout.position == "last" ? .last : .all, steering: steering, hooks: [hook]) { point, view in
                let index: Int
                if let (h, l) = point.hook {
                    guard h == hook else { return }
                    index = l + (probes.withEmbeddings ? 1 : 0)
                } else {
                    guard probes.withEmbeddings else { return }
                    index = 0
                }
                guard wanted.contains(index) else { return }
                buffer.withUnsafeMutableBufferPointer { b in Extractor.read(view, positions: p.positions, into: b.baseAddress!) }
                out[index] = probes.probabilities(layer: index, residual: buffer)
            }
            return out
        }
    }
}
