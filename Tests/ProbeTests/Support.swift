import Foundation
import Probe
import Quant
import Formats

enum ProbeFixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures/probe")
    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(name)))) as! [String: Any]
    }
}

/// A fresh scratch directory under the system temp dir.
func scratchDirectory(_ name: String = #function) -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("llamaprobe-probe-\(name.filter(\.isLetter))-\(UUID().uuidString.prefix(8))").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// One PyTorch reference training case (Tests/fixtures/probe/make_probe_fixtures.py).
struct TrainingCase {
    let name: String
    let values: [Float]
    let labels: [Int]
    let layers: Int
    let dModel: Int
    let classes: Int
    let train: [Int]
    let val: [Int]
    let config: TrainConfig
    let initial: [(weight: [Float], bias: [Float])]
    let finalWeights: [(weight: [Float], bias: [Float])]
    let reference: [[[String: Any]]]   // [layer][epoch]

    init(_ name: String) throws {
        self.name = name
        let f = try SafeTensorsFile(path: ProbeFixtures.path("train_\(name).safetensors"))
        let j = try ProbeFixtures.json("train_\(name).json")
        let shape = try f.info("resid_post").shape
        values = try f.floats("resid_post")
        labels = try f.integers("labels").map { Int($0) }
        layers = shape[1]; dModel = shape[2]
        classes = j["classes"] as! Int
        train = j["train"] as! [Int]
        val = j["val"] as! [Int]
        let hp = j["hyperparameters"] as! [String: Any]
        var c = TrainConfig()
        c.epochs = hp["epochs"] as! Int
        c.learningRate = hp["lr"] as! Double
        c.adam.beta1 = hp["beta1"] as! Double
        c.adam.beta2 = hp["beta2"] as! Double
        c.adam.weightDecay = hp["weight_decay"] as! Double
        c.adam.biasDecay = hp["bias_decay"] as! Bool
        c.batchSize = hp["batch_size"] as! Int
        c.valBatchSize = hp["val_batch_size"] as! Int
        c.valEvery = hp["val_every"] as! Int
        c.plateauFactor = hp["plateau_factor"] as! Double
        c.plateauPatience = hp["plateau_patience"] as! Int
        c.plateauOn = PlateauMetric(rawValue: hp["plateau_on"] as! String)!
        c.shuffle = false
        c.threads = 2
        config = c
        initial = try (0..<shape[1]).map { (try f.floats("layer\($0).weight"), try f.floats("layer\($0).bias")) }
        finalWeights = try (0..<shape[1]).map { (try f.floats("layer\($0).final_weight"), try f.floats("layer\($0).final_bias")) }
        reference = (j["layers"] as! [[String: Any]]).map { $0["epochs"] as! [[String: Any]] }
    }

    func trainer(threads: Int = 2) throws -> ProbeTrainer {
        var c = config
        c.threads = threads
        let data = ResidentActivations(values: values, layerCount: layers, dModel: dModel, labels: labels)
        return try ProbeTrainer(config: c, source: data, labels: labels.map { Int32($0) }, classes: classes,
                                layers: Array(0..<layers), train: train, val: val, initial: initial)
    }
}

/// Writes rows [n, layers, dModel] with ShardWriter (row indices `rowIDs`, default 0..<n).
func writeShards(_ dir: String, values: [Float], labels: [Int], layers: Int, dModel: Int, labelNames: [String],
                 rowsPerShard: Int = 16, dtype: ActivationType = .f32, rowIDs: [Int]? = nil, worker: Int = 0, workers: Int = 1,
                 model: String = "test-model", suffix: String = "", config: [String: String] = ["test": "1"]) throws {
    let meta = ShardMetadata(model: model, labels: labelNames, template: "raw", suffix: suffix, systemPrompt: "",
                             layers: Array(0..<layers), withEmbeddings: false, dtype: dtype, dModel: dModel)
    let w = try ShardWriter(directory: dir, worker: worker, workers: workers, metadata: meta, rowsPerShard: rowsPerShard,
                            config: config)
    let per = layers * dModel
    try values.withUnsafeBufferPointer { v in
        for i in 0..<labels.count {
            try w.append(row: rowIDs?[i] ?? i, label: labels[i], nTokens: 5, activations: v.baseAddress! + i * per)
        }
    }
    try w.finish()
}

extension TrainingCase {
    /// The case's data as a shard directory, its split as split.json and its initial weights as --init.
    func materialize(_ dir: String, rowsPerShard: Int = 16, dtype: ActivationType = .f32) throws -> (shards: String, split: String, initPath: String) {
        let shards = dir + "/shards"
        try writeShards(shards, values: values, labels: labels, layers: layers, dModel: dModel,
                        labelNames: (0..<classes).map { "class\($0)" }, rowsPerShard: rowsPerShard, dtype: dtype)
        let split = dir + "/split.json"
        try SplitFile(train: train, val: val).json.write(toFile: split, atomically: true, encoding: .utf8)
        let initPath = dir + "/init.safetensors"
        var specs: [SafeTensorsWriter.Spec] = []
        for l in 0..<layers { specs += [.init("layer\(l).weight", .f32, [classes, dModel]), .init("layer\(l).bias", .f32, [classes])] }
        let w = try SafeTensorsWriter(path: initPath, tensors: specs)
        for (wt, b) in initial { try w.write(wt); try w.write(b) }
        try w.commit()
        return (shards, split, initPath)
    }

    func jobOptions(_ dir: String, shards: String, split: String, initPath: String) -> TrainJobOptions {
        var o = TrainJobOptions(shardDirectories: [shards], outDirectory: dir + "/out")
        o.config = config
        o.splitPath = split
        o.initPath = initPath
        return o
    }
}
