import Foundation
import Model
import Probe
import Quant
import Formats

/// Trained probes, as `llamaprobe train` writes them: `probes.safetensors` (every layer's best and final
/// probe), or the `probe_at_layer_{L}.pth` files with `probe_training_metrics.csv`.
public struct ProbeSet: Sendable {
    public struct Probe: Sendable {
        public let weight: [Float]   // [classes, d_model]
        public let bias: [Float]     // [classes]

        /// Refuses NaN or infinite weights (they would print nan and pick the first label), naming file and layer.
        init(weight: [Float], bias: [Float], file: String, layer: Int) throws {
            if let i = weight.firstIndex(where: { !$0.isFinite }) {
                throw CheckpointError(file: file, reason: "layer \(layer): weight element \(i) is \(weight[i]); probe weights must be finite")
            }
            if let i = bias.firstIndex(where: { !$0.isFinite }) {
                throw CheckpointError(file: file, reason: "layer \(layer): bias element \(i) is \(bias[i]); probe weights must be finite")
            }
            self.weight = weight; self.bias = bias
        }
    }
    public let directory: String
    public private(set) var labels: [String]
    /// Whether `labels` came from the probes' own files (probes.safetensors) rather than a default.
    public let labelsRecorded: Bool
    /// Probe layer index -> probe (the best checkpoint when there is one, else the final one).
    public let probes: [Int: Probe]
    /// The layer with the highest validation accuracy; nil for .pth probes without a metrics file that says.
    public let bestLayer: Int?
    public let dModel: Int
    /// Layer indices follow HF hidden_states (0 = embeddings) when the shards held the embeddings.
    public let withEmbeddings: Bool
    public let model: String?
    /// The quantization of the model the probes were trained on, when recorded.
    public var quantization: String? = nil
    /// How the training rows were read (nil: unknown: imported activations or older probes).
    public var readout: ReadoutRecipe? = nil

    public static func load(directory: String) throws -> ProbeSet {
        let st = directory + "/probes.safetensors"
        guard FileManager.default.fileExists(atPath: st) else {
            return try loadTorch(directory: directory)
        }
        let f = try SafeTensorsFile(path: st)
        func fail(_ r: String) -> ShardError { ShardError(file: st, reason: r) }
        func json<T: Decodable>(_ key: String, _ t: T.Type) throws -> T {
            guard let s = f.metadata[key], let v = try? JSONDecoder().decode(T.self, from: Data(s.utf8)) else {
                throw fail("metadata '\(key)' is missing or not JSON")
            }
            return v
        }
        let labels = try json("labels", [String].self), layers = try json("layers", [Int].self)
        guard let best = f.metadata["best_layer"].flatMap(Int.init) else { throw fail("metadata 'best_layer' is missing") }
        try checkLayers(layers, file: st)
        guard layers.contains(best) else { throw fail("metadata 'best_layer' \(best) is not one of the probes' layers \(layers)") }
        guard labels.count >= 2 else { throw fail("metadata 'labels' names \(labels.count) classes; a probe has at least 2") }
        var probes: [Int: Probe] = [:]
        var d = f.metadata["d_model"].flatMap { Int($0) } ?? 0
        for l in layers {
            let name = f.tensors["layer\(l).weight"] != nil ? "layer\(l)" : "layer\(l).final"
            let wi = try f.info(name + ".weight"), bi = try f.info(name + ".bias")
            if d == 0 { d = wi.shape.last ?? 0 }
            guard wi.shape == [labels.count, d], bi.shape == [labels.count], d > 0 else {
                throw fail("\(name): weight \(wi.shape) and bias \(bi.shape), expected [\(labels.count), \(d)] and [\(labels.count)] (\(labels.count) labels, d_model \(d))")
            }
            probes[l] = try Probe(weight: f.floats(name + ".weight"), bias: f.floats(name + ".bias"), file: st, layer: l)
        }
        return ProbeSet(directory: directory, labels: labels, labelsRecorded: true, probes: probes, bestLayer: best, dModel: d,
                        withEmbeddings: f.metadata["with_embeddings"] == "true", model: f.metadata["model"],
                        quantization: f.metadata["quantization"], readout: try f.metadata["readout"].map { try ReadoutRecipe.parse($0, file: st) })
    }

    /// Layer numbers must be distinct, non-negative and few (the model check compares them to its layers).
    static func checkLayers(_ layers: [Int], file: String) throws {
        guard !layers.isEmpty else { throw ShardError(file: file, reason: "no probe layers") }
        if let bad = layers.first(where: { !(0..<ShardMetadata.maxLayers).contains($0) }) {
            throw ShardError(file: file, reason: "layer \(bad) is not a layer number (0..<\(ShardMetadata.maxLayers))")
        }
        guard Set(layers).count == layers.count else { throw ShardError(file: file, reason: "a layer is listed twice") }
    }

    /// The .pth files and the metrics (best layer = highest best validation accuracy, first on ties).
    static func loadTorch(directory: String) throws -> ProbeSet {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
        var layers: [Int] = []
        for f in files where f.hasPrefix("probe_at_layer_") && f.hasSuffix(".pth") && !f.hasSuffix("_final.pth") {
            let number = f.dropFirst("probe_at_layer_".count).dropLast(4)
            guard let l = Int(number), l >= 0, String(l) == number else {
                throw CheckpointError(file: directory + "/" + f, reason: "'\(number)' is not a layer number (probe_at_layer_L.pth with L = 0, 1, …)")
            }
            layers.append(l)
        }
        layers.sort()
        guard let first = layers.first else {
            throw ShardError(file: directory, reason: "no probes.safetensors or probe_at_layer_*.pth: not a `llamaprobe train` output directory")
        }
        try checkLayers(layers, file: directory)
        var probes: [Int: Probe] = [:]
        var classes = 0, d = 0
        for l in layers {
            let path = directory + "/probe_at_layer_\(l).pth"
            let t = try TorchCheckpoint.read(path: path)
            guard let w = t.first(where: { $0.name.hasSuffix("weight") }), let b = t.first(where: { $0.name.hasSuffix("bias") }) else {
                throw CheckpointError(file: path, reason: "no classifier.0.weight / bias")
            }
            guard w.shape.count == 2, b.shape.count == 1, w.shape[0] == b.shape[0], w.shape[0] >= 2, w.shape[1] >= 1 else {
                throw CheckpointError(file: path, reason: "weight \(w.shape) and bias \(b.shape) are not a probe's [classes ≥ 2, d_model] and [classes]")
            }
            if classes == 0 { classes = w.shape[0]; d = w.shape[1] }
            guard w.shape == [classes, d] else {
                throw CheckpointError(file: path, reason: "\(w.shape[0]) classes × \(w.shape[1]) inputs, unlike probe_at_layer_\(first).pth (\(classes) × \(d))")
            }
            probes[l] = try Probe(weight: w.values, bias: b.values, file: path, layer: l)
        }
        let best = try bestFromMetrics(directory + "/probe_training_metrics.csv", layers: Set(probes.keys))?.layer
        // .pth files carry no label names: the reference recipe's seven states for seven outputs, else class_i
        // (`predict --labels` names them).
        let names = classes == defaultEmotionLabels.count ? defaultEmotionLabels : (0..<classes).map { "class_\($0)" }
        // readout.json (written by train beside the .pth files): the recipe and the model.
        let recorded = try ReadoutRecipe.File.read(directory: directory)
        return ProbeSet(directory: directory, labels: names, labelsRecorded: false, probes: probes, bestLayer: best,
                        dModel: d, withEmbeddings: recorded?.readout?.withEmbeddings ?? false, model: recorded?.model,
                        quantization: recorded?.quantization, readout: recorded?.readout)
    }

    /// The best layer recorded in a metrics CSV (nil when the file is absent or has no `layer` column and
    /// accuracy column): the highest value of its `best_accuracy` column (or `best_val_accuracy`, `best_val_acc`,
    /// `val_accuracy`, `val_acc`, `validation_accuracy`, `accuracy`: the first present), the lowest layer on ties, as `train` chooses. Columns are
    /// found by name in the header. A layer without a probe (in `layers`) is refused.
    public static func bestFromMetrics(_ path: String, layers: Set<Int>? = nil) throws -> (layer: Int, accuracy: Double)? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let text = try Files.readText(path, limit: 64 << 20)
        var lines = text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).map {
            $0.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        guard !lines.isEmpty else { return nil }
        let header = lines.removeFirst().map { $0.replacingOccurrences(of: "\u{FEFF}", with: "").lowercased() }
        guard let li = header.firstIndex(of: "layer") else { return nil }
        let ai = ["best_accuracy", "best_val_accuracy", "best_val_acc", "val_accuracy", "val_acc", "validation_accuracy", "accuracy"]
            .lazy.compactMap({ header.firstIndex(of: $0) }).first
        var best: (layer: Int, accuracy: Double)?
        for (i, c) in lines.enumerated() where c.count > li {
            guard let l = Int(c[li]) else { continue }
            if let layers, !layers.contains(l) {
                throw CheckpointError(file: path, reason: "line \(i + 2) names layer \(l), which has no probe_at_layer_\(l).pth")
            }
            // e.g. val_accuracy is empty when not validated
            guard let ai, c.count > ai, let a = Double(c[ai]), a.isFinite else { continue }
            if best == nil || a > best!.accuracy || (a == best!.accuracy && l < best!.layer) { best = (l, a) }
        }
        return best
    }

    /// `--labels`: names the classes of .pth probes, or must equal the label set recorded with the probes.
    public mutating func useLabels(_ names: [String]) throws {
        guard names.count == labels.count else {
            throw ExtractionError("--labels names \(names.count) classes but the probes in \(directory) have \(labels.count) outputs")
        }
        if labelsRecorded && names != labels {
            throw ExtractionError("--labels \(names.joined(separator: ",")) differs from the label set the probes in \(directory) were trained on: \(labels.joined(separator: ","))")
        }
        labels = names
    }

    /// Refuses probes that cannot apply to this model, naming the mismatch.
    public func check(against c: LlamaConfig) throws {
        guard dModel == c.hiddenSize else {
            throw ExtractionError("the probes in \(directory) read d_model \(dModel) but the model's hidden size is \(c.hiddenSize)")
        }
        let available = c.numHiddenLayers + (withEmbeddings ? 1 : 0)
        if let bad = probes.keys.sorted().first(where: { $0 >= available }) {
            throw ExtractionError("the probes in \(directory) include layer \(bad) but the model has \(c.numHiddenLayers) layers\(withEmbeddings ? " (+ embeddings)" : "")")
        }
    }

    /// Sigmoid class probabilities of `layer`'s probe on a residual vector.
    public func probabilities(layer: Int, residual: UnsafePointer<Float>) -> [Float] {
        guard let p = probes[layer] else { return [] }
        return (0..<labels.count).map { k in
            var z = p.bias[k]
            for i in 0..<dModel { z += p.weight[k * dModel + i] * residual[i] }
            return 1 / (1 + expf(-z))
        }
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
        return try messages.map { content in
            let ids = try readout.tokens(content, tokenizer: m.tokenizer).ids
            var out: [Int: [Float]] = [:]
            let wanted = Set(layers)
            try m.model.forward(ids, positions: .last, steering: steering) { point, view in
                let index: Int
                switch point {
                case .embedding: guard probes.withEmbeddings else { return }; index = 0
                case .residPost(let l): index = l + (probes.withEmbeddings ? 1 : 0)
                }
                if wanted.contains(index) { out[index] = probes.probabilities(layer: index, residual: view.row(position: ids.count - 1)) }
            }
            return out
        }
    }
}
