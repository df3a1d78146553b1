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
    }
    public let directory: String
    public private(set) var labels: [String]
    /// Whether `labels` came from the probes' own files (probes.safetensors) rather than a default.
    public let labelsRecorded: Bool
    /// Probe layer index -> probe (the best checkpoint when there is one, else the final one).
    public let probes: [Int: Probe]
    public let bestLayer: Int
    public let dModel: Int
    /// Layer indices follow HF hidden_states (0 = embeddings) when the shards held the embeddings.
    public let withEmbeddings: Bool
    public let model: String?

    public static func load(directory: String) throws -> ProbeSet {
        let st = directory + "/probes.safetensors"
        guard FileManager.default.fileExists(atPath: st) else {
            return try loadTorch(directory: directory)
        }
        let f = try SafeTensorsFile(path: st)
        func json<T: Decodable>(_ key: String, _ t: T.Type) throws -> T {
            guard let s = f.metadata[key], let v = try? JSONDecoder().decode(T.self, from: Data(s.utf8)) else {
                throw ShardError(file: st, reason: "metadata '\(key)' is missing or not JSON")
            }
            return v
        }
        let labels = try json("labels", [String].self), layers = try json("layers", [Int].self)
        guard let best = f.metadata["best_layer"].flatMap(Int.init) else { throw ShardError(file: st, reason: "metadata 'best_layer' is missing") }
        var probes: [Int: Probe] = [:]
        var d = 0
        for l in layers {
            let name = f.tensors["layer\(l).weight"] != nil ? "layer\(l)" : "layer\(l).final"
            let w = try f.floats(name + ".weight"), b = try f.floats(name + ".bias")
            d = w.count / max(1, b.count)
            guard b.count == labels.count, w.count == d * labels.count else {
                throw ShardError(file: st, reason: "\(name): shape does not match \(labels.count) labels")
            }
            probes[l] = Probe(weight: w, bias: b)
        }
        return ProbeSet(directory: directory, labels: labels, labelsRecorded: true, probes: probes, bestLayer: best, dModel: d,
                        withEmbeddings: f.metadata["with_embeddings"] == "true", model: f.metadata["model"])
    }

    /// The .pth files and the metrics (best layer = highest best validation accuracy, first on ties).
    static func loadTorch(directory: String) throws -> ProbeSet {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
        let layers = files.compactMap { f -> Int? in
            guard f.hasPrefix("probe_at_layer_"), f.hasSuffix(".pth"), !f.hasSuffix("_final.pth") else { return nil }
            return Int(f.dropFirst("probe_at_layer_".count).dropLast(4))
        }.sorted()
        guard !layers.isEmpty else {
            throw ShardError(file: directory, reason: "no probes.safetensors or probe_at_layer_*.pth: not a `llamaprobe train` output directory")
        }
        var probes: [Int: Probe] = [:]
        var classes = 0
        for l in layers {
            let t = try TorchCheckpoint.read(path: directory + "/probe_at_layer_\(l).pth")
            guard let w = t.first(where: { $0.name.hasSuffix("weight") }), let b = t.first(where: { $0.name.hasSuffix("bias") }) else {
                throw CheckpointError(file: directory + "/probe_at_layer_\(l).pth", reason: "no classifier.0.weight / bias")
            }
            guard classes == 0 || (b.values.count == classes && w.values.count == probes[layers[0]]!.weight.count) else {
                throw CheckpointError(file: directory + "/probe_at_layer_\(l).pth",
                                      reason: "\(b.values.count) classes × \(w.values.count / max(1, b.values.count)) inputs, unlike probe_at_layer_\(layers[0]).pth")
            }
            classes = b.values.count
            probes[l] = Probe(weight: w.values, bias: b.values)
        }
        var best = layers[0], bestAcc = -1.0
        if let csv = try? String(contentsOfFile: directory + "/probe_training_metrics.csv", encoding: .utf8) {
            for line in csv.split(separator: "\n").dropFirst() {
                let c = line.split(separator: ",", omittingEmptySubsequences: false)
                if c.count > 5, let l = Int(c[0]), let a = Double(c[5]), a > bestAcc { bestAcc = a; best = l }
            }
        }
        let w = probes[layers[0]]!.weight
        // .pth files carry no label names: the reference recipe's seven states for seven outputs, else class_i
        // (`predict --labels` names them).
        let names = classes == defaultEmotionLabels.count ? defaultEmotionLabels : (0..<classes).map { "class_\($0)" }
        return ProbeSet(directory: directory, labels: names, labelsRecorded: false, probes: probes, bestLayer: best,
                        dModel: w.count / max(1, classes), withEmbeddings: false, model: nil)
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
        let p = probes[layer]!
        return (0..<labels.count).map { k in
            var z = p.bias[k]
            for i in 0..<dModel { z += p.weight[k * dModel + i] * residual[i] }
            return 1 / (1 + expf(-z))
        }
    }
}

/// `llamaprobe predict`: the same template and forward pass as extraction, then the probes.
public enum Predictor {
    /// A warning when the probes were trained on residuals of another model (or another quantization of it):
    /// shapes may fit while the numbers mean something else. nil when the identities agree or are unknown.
    public static func identityWarning(model m: LoadedModel, probes: ProbeSet) -> String? {
        guard let trained = probes.model, !trained.hasPrefix("imported:") else { return nil }
        let here = Extractor.modelIdentity(m)
        guard trained != here else { return nil }
        return "warning: the probes in \(probes.directory) were trained on residuals of model \(trained), but \(m.path) is \(here) "
            + "(another checkpoint or quantization); their probabilities are only meaningful on the model they were trained on"
    }

    /// Refuses labelled rows whose label the probes do not know, naming the file, row and label.
    public static func checkLabels(_ labels: [(row: Int, label: String)], file: String, probes: ProbeSet) throws {
        let known = Set(probes.labels)
        if let bad = labels.first(where: { !known.contains($0.label) }) {
            throw ExtractionError("\(file) (row \(bad.row)): label '\(bad.label)' is not one of the probes' labels "
                + "(\(probes.labels.joined(separator: ","))): the probes were trained on another label set")
        }
    }

    /// For each message, layer -> class probabilities for the requested layers.
    public static func run(model m: LoadedModel, probes: ProbeSet, renderer: PromptRenderer, maxTokens: Int,
                           messages: [DatasetRow.Content], layers: [Int]) throws -> [[Int: [Float]]] {
        try probes.check(against: m.config)
        return try messages.map { content in
            var ids: [Int32]
            switch content {
            case .message(let text): ids = try m.tokenizer.encode(renderer.render(text))
            case .conversation(let t): ids = try m.tokenizer.encode(try renderer.render(messages: t.map { ChatMessage(role: $0.role, content: $0.content) }))
            }
            if ids.count > maxTokens { ids = [ids[0]] + ids[(ids.count - maxTokens + 1)...] }   // as extraction truncates
            var out: [Int: [Float]] = [:]
            let wanted = Set(layers)
            try m.model.forward(ids, positions: .last) { point, view in
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
