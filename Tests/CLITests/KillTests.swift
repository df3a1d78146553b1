import Foundation
import Model
import Quant
import Formats
import Testing

/// Runs killed with SIGKILL at the worst moment: the next run cleans up, and nothing half-written is ever
/// visible under an output name.
@Suite(.serialized) struct KillTests {
    /// Starts `llamaprobe args`, waits until `appears` returns true (polling every millisecond, at most
    /// `seconds`), then sends SIGKILL. Returns whether it was killed while `appears` held.
    static func killWhen(_ args: [String], seconds: Double = 60, _ appears: () -> Bool) throws -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.executable)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(seconds)
        var killed = false
        while p.isRunning && Date() < deadline {
            if appears() { kill(p.processIdentifier, SIGKILL); killed = true; break }
            usleep(1000)
        }
        p.waitUntilExit()
        return killed && p.terminationReason == .uncaughtSignal
    }

    static func names(_ dir: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() }

    @Test("kill -9 during quantize: no file under the output name, and the next run removes the leftover")
    func quantizeKilled() throws {
        let dir = scratch()
        // Wide enough that writing the GGUF takes a while (about 100 MB of f32 weights).
        let c = LlamaConfig(hiddenSize: 1024, intermediateSize: 2816, numHiddenLayers: 2, numAttentionHeads: 8,
                            vocabSize: 1024, maxPositionEmbeddings: 256)
        let tok = try Files.readData(CLI.fixtures.appendingPathComponent("tokenizer/fixture.model").path)
        try Synth.write(config: c, to: dir + "/m", seed: 3, dtype: .f32, tokenizer: tok, pool: ThreadPool(threads: 1))
        let out = dir + "/m.gguf"
        var killed = false
        for _ in 0..<5 where !killed {
            killed = try Self.killWhen(["quantize", "--model", dir + "/m", "--out", out, "--threads", "1"]) {
                Self.names(dir).contains { $0.hasPrefix(".m.gguf.tmp-") }
            }
        }
        try #require(killed, "quantize finished before it could be killed mid-write")
        #expect(!FileManager.default.fileExists(atPath: out), "a killed quantize left a file under the output name")
        #expect(Self.names(dir).contains { $0.hasPrefix(".m.gguf.tmp-") })
        let r = try CLI.run(["quantize", "--model", dir + "/m", "--out", out, "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Self.names(dir) == ["m", "m.gguf"], "leftovers after the next run: \(Self.names(dir))")
    }

    @Test("kill -9 during train --overwrite: the old result stays whole, and the next run removes the leftover")
    func trainOverwriteKilled() throws {
        let dir = scratch()
        // 300 layers: writing the result (two .pth files per layer, each fsynced) takes long enough to be caught.
        let n = 30, layers = 300, d = 64
        let values = (0..<(n * layers * d)).map { i in Float(sin(Double(i) * 0.37)) + Float((i / (layers * d)) % 3) * 0.1 }
        let labels = (0..<n).map { Int64($0 % 3) }
        try TrainCLITests.writeNpy(dir + "/acts.npy", descr: "<f4", shape: [n, layers, d], bytes: values.withUnsafeBytes { Array($0) })
        try TrainCLITests.writeNpy(dir + "/labels.npy", descr: "<i8", shape: [n], bytes: labels.withUnsafeBytes { Array($0) })
        let imp = try CLI.run(["shards", "import", "--activations", dir + "/acts.npy", "--labels", dir + "/labels.npy",
                               "--label-names", "happy,neutral,sad", "--out", dir + "/shards"])
        try #require(imp.status == 0, "\(imp.stderr)")
        let train = ["train", "--shards", dir + "/shards", "--out", dir + "/probes", "--epochs", "1", "--threads", "1"]
        let first = try CLI.run(train)
        try #require(first.status == 0, "\(first.stderr)")
        var killed = false
        var before: [String] = [], weights: [UInt8] = []
        for _ in 0..<5 where !killed {
            before = Self.names(dir + "/probes")
            weights = try Files.read(dir + "/probes/probes.safetensors")
            killed = try Self.killWhen(train + ["--overwrite"]) { Self.names(dir).contains { $0.hasPrefix(".probes.tmp-") } }
        }
        try #require(killed, "train finished before it could be killed")
        #expect(Self.names(dir + "/probes") == before)
        #expect(try Files.read(dir + "/probes/probes.safetensors") == weights, "the old probes changed")
        #expect(Self.names(dir).contains { $0.hasPrefix(".probes.tmp-") })
        let again = try CLI.run(train + ["--overwrite"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(!Self.names(dir).contains { $0.hasPrefix(".probes.tmp-") }, "leftovers: \(Self.names(dir))")
    }
}
