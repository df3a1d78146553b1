import Foundation
import Quant
import Formats

/// The reference recipe's seven emotional states, in id order.
public let defaultEmotionLabels = ["very_happy", "happy", "slightly_positive", "neutral", "slightly_negative", "sad", "very_sad"]

/// The files of a probe directory (`llamaprobe train --out`). `ProbeSet.write` is their one writer and
/// `ProbeSet.load` their one reader; nothing else spells these names.
public enum ProbeFiles {
    /// Every layer's best and final probe as f32 tensors `layerL.weight/.bias` and `layerL.final.weight/.bias`,
    /// with `ProbeSetMetadata` as its metadata.
    public static let probes = "probes.safetensors"
    /// `layer,epoch,train_loss,train_accuracy,val_accuracy,best_accuracy,is_best,lr`, one row per epoch.
    public static let metrics = "probe_training_metrics.csv"
    public static let split = "split.json"
    public static let summary = "probe_training_summary.md"
    public static let plot = "accuracy_by_layer.svg"
    /// One row per layer: validation accuracy with its Wilson interval, test accuracy, mean ± sd over runs.
    public static let layerSummary = "layer_summary.csv"
    /// Per-run accuracies of `--cv K` (`layer,fold,val_accuracy`) and of `--seeds K`.
    public static let cv = "cv.csv", seeds = "seeds.csv"
    /// The readout recipe and model beside the .pth files (which record neither).
    public static let readout = ReadoutRecipe.File.name
    /// The best checkpoint of a layer (PyTorch state_dict `classifier.0.weight/bias`).
    public static func best(layer: Int) -> String { "probe_at_layer_\(layer).pth" }
    /// The last epoch's weights of a layer.
    public static func final(layer: Int) -> String { "probe_at_layer_\(layer)_final.pth" }
    static let torchWeight = "classifier.0.weight", torchBias = "classifier.0.bias"
    static func tensor(layer: Int, final: Bool) -> String { "layer\(layer)" + (final ? ".final" : "") }
    /// The metrics columns, in the order `train` writes them.
    public static let metricsColumns = ["layer", "epoch", "train_loss", "train_accuracy", "val_accuracy", "best_accuracy", "is_best", "lr"]
}

/// probes.safetensors' metadata as a record (keys `format`, `labels`, `layers`, `best_layer`, `d_model`,
/// `with_embeddings`, `model`, `quantization`, `readout`, `best_epochs`).
public struct ProbeSetMetadata: Equatable, Sendable {
    public static let format = "llamaprobe-probes"
    public var labels: [String]
    public var layers: [Int]
    public var bestLayer: Int
    /// 0 when an older file did not record it (then it comes from the tensors' shapes).
    public var dModel: Int
    public var withEmbeddings: Bool
    public var model: String?
    public var quantization: String?
    public var readout: ReadoutRecipe?
    /// Layer -> the epoch of its best checkpoint (layers validated at least once).
    public var bestEpochs: [Int: Int]
    /// How outputs become probabilities: one sigmoid per class (the reference recipe's BCE probes) or a softmax
    /// over the classes (`--recipe logistic`'s multinomial logistic regression). Key `output`.
    public var output: ProbeOutput

    public init(labels: [String], layers: [Int], bestLayer: Int, dModel: Int, withEmbeddings: Bool, model: String?,
                quantization: String?, readout: ReadoutRecipe?, output: ProbeOutput = .sigmoid, bestEpochs: [Int: Int]) {
        self.labels = labels; self.layers = layers; self.bestLayer = bestLayer; self.dModel = dModel
        self.withEmbeddings = withEmbeddings; self.model = model; self.quantization = quantization
        self.readout = readout; self.output = output; self.bestEpochs = bestEpochs
    }

    var strings: [String: String] {
        var m: [String: String] = [
            "format": Self.format, "labels": "[" + labels.map(jsonString).joined(separator: ",") + "]",
            "layers": "[" + layers.map(String.init).joined(separator: ",") + "]",
            "best_layer": String(bestLayer), "d_model": String(dModel), "with_embeddings": withEmbeddings ? "true" : "false",
            "best_epochs": "{" + bestEpochs.keys.sorted().map { "\"\($0)\":\(bestEpochs[$0]!)" }.joined(separator: ",") + "}",
        ]
        m["model"] = model
        m["quantization"] = quantization
        m["readout"] = readout?.json
        m["output"] = output.rawValue
        return m
    }

    /// Parses and validates the metadata of `file`, naming the key that is missing or wrong.
    init(strings m: [String: String], file: String) throws {
        func fail(_ r: String) -> ShardError { ShardError(file: file, reason: r) }
        func json<T: Decodable>(_ key: String, _ t: T.Type) throws -> T {
            guard let s = m[key], let v = try? JSONDecoder().decode(T.self, from: Data(s.utf8)) else {
                throw fail("metadata '\(key)' is missing or not JSON")
            }
            return v
        }
        labels = try json("labels", [String].self)
        layers = try json("layers", [Int].self)
        guard let best = m["best_layer"].flatMap(Int.init) else { throw fail("metadata 'best_layer' is missing") }
        try ProbeSet.checkLayers(layers, file: file)
        guard layers.contains(best) else { throw fail("metadata 'best_layer' \(best) is not one of the probes' layers \(layers)") }
        guard labels.count >= 2 else { throw fail("metadata 'labels' names \(labels.count) classes; a probe has at least 2") }
        bestLayer = best
        dModel = m["d_model"].flatMap { Int($0) } ?? 0
        guard dModel >= 0 else { throw fail("metadata 'd_model' \(dModel) is negative") }
        withEmbeddings = m["with_embeddings"] == "true"
        model = m["model"]
        quantization = m["quantization"]
        readout = try m["readout"].map { try ReadoutRecipe.parse($0, file: file) }
        if let h = readout?.hookList, h.count != 1 {
            throw fail("metadata 'readout' lists the hooks \(h.joined(separator: ",")); probes are trained on one (train --hook)")
        }
        let epochs = (m["best_epochs"].flatMap { try? JSONDecoder().decode([String: Int].self, from: Data($0.utf8)) }) ?? [:]
        bestEpochs = Dictionary(uniqueKeysWithValues: epochs.compactMap { k, v in Int(k).map { ($0, v) } })
        guard let out = ProbeOutput(rawValue: m["output"] ?? ProbeOutput.sigmoid.rawValue) else {
            throw fail("metadata 'output' '\(m["output"] ?? "")' is not sigmoid or softmax")
        }
        output = out
    }
}

/// Trained probes, as `llamaprobe train` writes them: `probes.safetensors` (every layer's best and final
/// probe), or the `probe_at_layer_{L}.pth` files with `probe_training_metrics.csv`.
public struct ProbeSet: Sendable {
    public struct Probe: Sendable {
        public let weight: [Float]   // [classes, d_model]
        public let bias: [Float]     // [classes]
        /// The weights as the trainer's kernels hold them: prediction runs training's own forward kernel.
        let state: ProbeState

        /// Refuses NaN or infinite weights (they would print nan and pick the first label), naming file and layer.
        init(weight: [Float], bias: [Float], file: String, layer: Int) throws {
            if let i = weight.firstIndex(where: { !$0.isFinite }) {
                throw CheckpointError(file: file, reason: "layer \(layer): weight element \(i) is \(weight[i]); probe weights must be finite")
            }
            if let i = bias.firstIndex(where: { !$0.isFinite }) {
                throw CheckpointError(file: file, reason: "layer \(layer): bias element \(i) is \(bias[i]); probe weights must be finite")
            }
            self.weight = weight; self.bias = bias
            state = ProbeState(weight: weight, bias: bias, classes: bias.count, dModel: weight.count / max(1, bias.count))
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
    /// Sigmoid per class (reference probes, and .pth files, which do not say) or softmax (logistic probes).
    public var output = ProbeOutput.sigmoid

    /// One layer's trained probe for `write`: the best checkpoint (when validated) and the final weights.
    public struct Trained: Sendable {
        public var layer: Int
        public var best: (weight: [Float], bias: [Float])?
        public var final: (weight: [Float], bias: [Float])
        public init(layer: Int, best: (weight: [Float], bias: [Float])?, final: (weight: [Float], bias: [Float])) {
            self.layer = layer; self.best = best; self.final = final
        }
    }

    /// Writes probes.safetensors, the .pth checkpoints and readout.json into `directory`; returns the file
    /// names written (each written atomically).
    public static func write(_ trained: [Trained], metadata: ProbeSetMetadata, into directory: String) throws -> [String] {
        let classes = metadata.labels.count, d = metadata.dModel
        var files: [String] = []
        func path(_ f: String) -> String { files.append(f); return directory + "/" + f }
        var specs: [SafeTensorsWriter.Spec] = []
        for t in trained {
            for (final, present) in [(false, t.best != nil), (true, true)] where present {
                let name = ProbeFiles.tensor(layer: t.layer, final: final)
                specs += [.init(name + ".weight", .f32, [classes, d]), .init(name + ".bias", .f32, [classes])]
            }
        }
        let sw = try SafeTensorsWriter(path: path(ProbeFiles.probes), tensors: specs, metadata: metadata.strings)
        for t in trained {
            if let b = t.best { try sw.write(b.weight); try sw.write(b.bias) }
            try sw.write(t.final.weight); try sw.write(t.final.bias)
        }
        try sw.commit()
        func tensors(_ w: [Float], _ b: [Float]) -> [TorchTensor] {
            [TorchTensor(name: ProbeFiles.torchWeight, shape: [classes, d], values: w),
             TorchTensor(name: ProbeFiles.torchBias, shape: [classes], values: b)]
        }
        for t in trained {
            if let b = t.best { try TorchCheckpoint.write(tensors(b.weight, b.bias), to: path(ProbeFiles.best(layer: t.layer))) }
            try TorchCheckpoint.write(tensors(t.final.weight, t.final.bias), to: path(ProbeFiles.final(layer: t.layer)))
        }
        let w = try AtomicFileWriter(path: path(ProbeFiles.readout))
        try w.write(ReadoutRecipe.File(readout: metadata.readout, model: metadata.model ?? "", quantization: metadata.quantization).text)
        try w.commit()
        return files
    }

    public static func load(directory: String) throws -> ProbeSet {
        let st = directory + "/" + ProbeFiles.probes
        guard FileManager.default.fileExists(atPath: st) else {
            return try loadTorch(directory: directory)
        }
        let f = try SafeTensorsFile(path: st)
        let meta = try ProbeSetMetadata(strings: f.metadata, file: st)
        let labels = meta.labels
        var probes: [Int: Probe] = [:]
        var d = meta.dModel
        for l in meta.layers {
            let name = ProbeFiles.tensor(layer: l, final: f.tensors[ProbeFiles.tensor(layer: l, final: false) + ".weight"] == nil)
            let wi = try f.info(name + ".weight"), bi = try f.info(name + ".bias")
            if d == 0 { d = wi.shape.last ?? 0 }
            guard wi.shape == [labels.count, d], bi.shape == [labels.count], d > 0 else {
                throw ShardError(file: st, reason: "\(name): weight \(wi.shape) and bias \(bi.shape), expected [\(labels.count), \(d)] and [\(labels.count)] (\(labels.count) labels, d_model \(d))")
            }
            probes[l] = try Probe(weight: f.floats(name + ".weight"), bias: f.floats(name + ".bias"), file: st, layer: l)
        }
        return ProbeSet(directory: directory, labels: labels, labelsRecorded: true, probes: probes, bestLayer: meta.bestLayer, dModel: d,
                        withEmbeddings: meta.withEmbeddings, model: meta.model, quantization: meta.quantization, readout: meta.readout,
                        output: meta.output)
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
            let path = directory + "/" + ProbeFiles.best(layer: l)
            let t = try TorchCheckpoint.read(path: path)
            guard let w = t.first(where: { $0.name.hasSuffix("weight") }), let b = t.first(where: { $0.name.hasSuffix("bias") }) else {
                throw CheckpointError(file: path, reason: "no classifier.0.weight / bias")
            }
            guard w.shape.count == 2, b.shape.count == 1, w.shape[0] == b.shape[0], w.shape[0] >= 2, w.shape[1] >= 1 else {
                throw CheckpointError(file: path, reason: "weight \(w.shape) and bias \(b.shape) are not a probe's [classes ≥ 2, d_model] and [classes]")
            }
            if classes == 0 { classes = w.shape[0]; d = w.shape[1] }
            guard w.shape == [classes, d] else {
                throw CheckpointError(file: path, reason: "\(w.shape[0]) classes × \(w.shape[1]) inputs, unlike \(ProbeFiles.best(layer: first)) (\(classes) × \(d))")
            }
            probes[l] = try Probe(weight: w.values, bias: b.values, file: path, layer: l)
        }
        let best = try bestFromMetrics(directory + "/" + ProbeFiles.metrics, layers: Set(probes.keys))?.layer
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
                throw CheckpointError(file: path, reason: "line \(i + 2) names layer \(l), which has no \(ProbeFiles.best(layer: l))")
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
            throw ProbeSetError("--labels names \(names.count) classes but the probes in \(directory) have \(labels.count) outputs")
        }
        if labelsRecorded && names != labels {
            throw ProbeSetError("--labels \(names.joined(separator: ",")) differs from the label set the probes in \(directory) were trained on: \(labels.joined(separator: ","))")
        }
        labels = names
    }

    /// Refuses probes that cannot apply to a model of this hidden size and layer count, naming the mismatch.
    public func check(hiddenSize: Int, layers: Int) throws {
        guard dModel == hiddenSize else {
            throw ProbeSetError("the probes in \(directory) read d_model \(dModel) but the model's hidden size is \(hiddenSize)")
        }
        let available = layers + (withEmbeddings ? 1 : 0)
        if let bad = probes.keys.sorted().first(where: { $0 >= available }) {
            throw ProbeSetError("the probes in \(directory) include layer \(bad) but the model has \(layers) layers\(withEmbeddings ? " (+ embeddings)" : "")")
        }
    }

    /// Sigmoid class probabilities of `layer`'s probe on a residual vector [d_model], computed by the
    /// training kernels (same summation order, same sigmoid): what validation computed for the same row.
    public func probabilities(layer: Int, residual: UnsafePointer<Float>) -> [Float] {
        guard let p = probes[layer] else { return [] }
        let scratch = KernelScratch(dModel: dModel)
        for k in 0..<4 { scratch.x[k] = residual }
        ProbeKernels.logits(p.state, UnsafePointer(scratch.x), scratch: scratch)
        if output == .softmax {   // multinomial logistic regression: softmax over the classes (f64, as it was fitted)
            let z = (0..<labels.count).map { Double(scratch.z[$0] + p.state.bias[$0]) }
            let m = z.max() ?? 0
            let e = z.map { Foundation.exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { Float($0 / s) }
        }
        return (0..<labels.count).map { j in 1 / (1 + Foundation.expf(-(scratch.z[j] + p.state.bias[j]))) }
    }
}

/// How a probe's outputs become probabilities.
public enum ProbeOutput: String, Sendable, Equatable {
    case sigmoid, softmax
}

public struct ProbeSetError: LocalizedError, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var errorDescription: String? { message }
}
