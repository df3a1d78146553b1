import Foundation
import Probe
import Quant
import Formats
import Testing

/// Bad input: one clear error naming the shard (or file, row, class), and nothing written.
@Suite struct TrainBadInputTests {
    /// A small valid shard directory (3 classes, 30 rows, 2 layers, d_model 8) in `dir/name`.
    static func shards(_ dir: String, _ name: String = "shards", labels: [Int]? = nil, labelNames: [String] = ["a", "b", "c"],
                       rowIDs: [Int]? = nil, nanAt: Int? = nil, model: String = "test-model", suffix: String = "",
                       config: [String: String] = ["test": "1"]) throws -> String {
        let labs = labels ?? (0..<30).map { $0 % 3 }
        var values = (0..<(labs.count * 16)).map { Float(sin(Double($0))) }
        if let r = nanAt { values[r * 16 + 9] = .nan }
        let path = dir + "/" + name
        try writeShards(path, values: values, labels: labs, layers: 2, dModel: 8, labelNames: labelNames, rowsPerShard: 8,
                        rowIDs: rowIDs, model: model, suffix: suffix, config: config)
        return path
    }

    static func options(_ dir: String, _ shardDirs: [String]) -> TrainJobOptions {
        var o = TrainJobOptions(shardDirectories: shardDirs, outDirectory: dir + "/out")
        o.config.epochs = 2
        o.config.batchSize = 8
        return o
    }

    /// Runs the job, expects an error whose message contains every fragment, and checks nothing was written.
    static func expectFailure(_ o: TrainJobOptions, _ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try TrainJob.run(o)
            Issue.record("expected an error mentioning \(fragments)", sourceLocation: sourceLocation)
        } catch {
            let message = error.localizedDescription
            for f in fragments {
                #expect(message.contains(f), "'\(message)' lacks '\(f)'", sourceLocation: sourceLocation)
            }
        }
        #expect(!FileManager.default.fileExists(atPath: o.outDirectory), "output written", sourceLocation: sourceLocation)
        let parent = (o.outDirectory as NSString).deletingLastPathComponent
        let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty, "temporary files left: \(leftovers)", sourceLocation: sourceLocation)
    }

    static func shardFile(_ dir: String, index: Int = 1) -> String { dir + "/" + Shard.fileName(worker: 0, index: index) }

    @Test("a directory without shards, and a missing directory")
    func emptyDirectory() throws {
        let dir = scratchDirectory()
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: true)
        Self.expectFailure(Self.options(dir, [dir + "/empty"]), [dir + "/empty", "manifest"])
        Self.expectFailure(Self.options(dir, [dir + "/nope"]), [dir + "/nope", "not a directory"])
    }

    @Test("corrupt, truncated, empty and unreadable shard files are named")
    func badShards() throws {
        let dir = scratchDirectory()
        let s = try Self.shards(dir)
        let file = Self.shardFile(s)
        let good = try Data(contentsOf: URL(fileURLWithPath: file))
        var corrupt = good
        corrupt[corrupt.count / 2] ^= 0xFF
        try corrupt.write(to: URL(fileURLWithPath: file))
        Self.expectFailure(Self.options(dir, [s]), [file, "corrupt"])
        try good.prefix(good.count - 10).write(to: URL(fileURLWithPath: file))
        Self.expectFailure(Self.options(dir, [s]), [file])
        try Data().write(to: URL(fileURLWithPath: file))
        Self.expectFailure(Self.options(dir, [s]), [file, "empty"])
        try FileManager.default.removeItem(atPath: file)
        Self.expectFailure(Self.options(dir, [s]), [file, "cannot read"])
        try Data("not zstd at all".utf8).write(to: URL(fileURLWithPath: file))
        Self.expectFailure(Self.options(dir, [s]), [file])
    }

    @Test("directories with different configurations are refused")
    func mixedConfigs() throws {
        let dir = scratchDirectory()
        let a = try Self.shards(dir, "a")
        let b = try Self.shards(dir, "b", labelNames: ["x", "y", "z"], rowIDs: Array(100..<130))
        Self.expectFailure(Self.options(dir, [a, b]), [b, "labels"])
        let c = try Self.shards(dir, "c", rowIDs: Array(100..<130), model: "another-model")
        Self.expectFailure(Self.options(dir, [a, c]), [c, "model"])
        // The same rows given twice.
        let d = try Self.shards(dir, "d")
        Self.expectFailure(Self.options(dir, [a, d]), ["duplicate rows", "row 0"])
        // Compatible directories train together.
        let e = try Self.shards(dir, "e", rowIDs: Array(100..<130))
        var o = Self.options(dir, [a, e])
        o.outDirectory = dir + "/ok"
        let r = try TrainJob.run(o)
        #expect(r.trainRows + r.valRows == 60)
    }

    @Test("two datasets (told apart by the data hash in their manifests) train together; the same dataset twice and a mismatched readout are refused")
    func twoDatasets() throws {
        let dir = scratchDirectory()
        func data(_ c: Character) -> [String: String] { ["data_file": "\(c).csv", "data_sha256": String(repeating: c, count: 64), "rows_total": "30"] }
        // The same row numbers 0..<30 in both: different datasets, so not duplicates.
        let a = try Self.shards(dir, "a", config: data("a"))
        let b = try Self.shards(dir, "b", config: data("b"))
        var o = Self.options(dir, [a, b])
        o.outDirectory = dir + "/ab"
        var log: [String] = []
        let r = try TrainJob.run(o, log: { log.append($0) })
        #expect(r.trainRows + r.valRows == 60)
        #expect(log.contains { $0.contains("2 datasets: a.csv (row numbers from 0), b.csv (row numbers from 30)") }, "\(log)")
        let split = try SplitFile.read(path: dir + "/ab/split.json")
        #expect(Set(split.train + split.val) == Set(0..<60))
        // The same dataset given twice is still refused.
        let a2 = try Self.shards(dir, "a2", config: data("a"))
        Self.expectFailure(Self.options(dir, [a, a2]), ["duplicate rows", "row 0"])
        // Another readout: refused naming the field.
        let c = try Self.shards(dir, "c", suffix: " Overall, the sentiment is", config: data("c"))
        Self.expectFailure(Self.options(dir, [a, c]), [c, "suffix \"\" vs \" Overall, the sentiment is\""])
    }

    @Test("a class of the label set without rows is refused unless allowed, naming the classes")
    func emptyClass() throws {
        let dir = scratchDirectory()
        let s = try Self.shards(dir, labels: (0..<30).map { $0 % 2 }, labelNames: ["happy", "sad", "neutral", "angry"])
        Self.expectFailure(Self.options(dir, [s]), ["2 of the 4 classes have no rows: 'neutral', 'angry'", "--allow-empty-classes"])
        var o = Self.options(dir, [s])
        o.allowEmptyClasses = true
        var log: [String] = []
        _ = try TrainJob.run(o, log: { log.append($0) })
        #expect(log.contains { $0.contains("warning: 2 of the 4 classes have no rows") }, "\(log)")
    }

    @Test("a class with fewer than 2 rows is refused, naming the class")
    func tinyClass() throws {
        let dir = scratchDirectory()
        var labels = (0..<30).map { $0 % 2 }
        labels[7] = 2
        let s = try Self.shards(dir, labels: labels, labelNames: ["happy", "sad", "neutral"])
        Self.expectFailure(Self.options(dir, [s]), ["'neutral' (id 2): 1 row", "at least 2 rows"])
    }

    @Test("NaN activations are refused, naming the shard and the row")
    func nan() throws {
        let dir = scratchDirectory()
        let s = try Self.shards(dir, nanAt: 19)
        Self.expectFailure(Self.options(dir, [s]), [Self.shardFile(s, index: 2), "row 3 of the shard", "NaN"])
    }

    @Test("bad --layers, --split and --init")
    func badOptions() throws {
        let dir = scratchDirectory()
        let s = try Self.shards(dir)
        var o = Self.options(dir, [s])
        o.layers = [5]
        Self.expectFailure(o, ["layer 5 is not in the shards"])
        o = Self.options(dir, [s])
        try "{\"train\": [0, 1, 2, 99], \"val\": [3]}".write(toFile: dir + "/split.json", atomically: true, encoding: .utf8)
        o.splitPath = dir + "/split.json"
        Self.expectFailure(o, ["split.json", "row 99"])
        try "{\"train\": [0, 1, 2], \"val\": [2]}".write(toFile: dir + "/split.json", atomically: true, encoding: .utf8)
        Self.expectFailure(o, ["twice"])
        o = Self.options(dir, [s])
        let w = try SafeTensorsWriter(path: dir + "/init.safetensors", tensors: [.init("layer0.weight", .f32, [3, 8]), .init("layer0.bias", .f32, [3])])
        try w.write([Float](repeating: 0, count: 24)); try w.write([Float](repeating: 0, count: 3)); try w.commit()
        o.initPath = dir + "/init.safetensors"
        Self.expectFailure(o, ["init.safetensors", "layer1.weight"])
        o = Self.options(dir, [s])
        o.config.lr = 0
        Self.expectFailure(o, ["--lr"])
    }
}

extension TrainConfig {
    var lr: Double { get { learningRate } set { learningRate = newValue } }
}
