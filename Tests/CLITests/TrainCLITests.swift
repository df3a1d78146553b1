import Foundation
import Testing

/// `llamaprobe shards import` and `llamaprobe train` end to end, through the executable.
@Suite struct TrainCLITests {
    /// A C-order .npy file (format 1.0).
    static func writeNpy(_ path: String, descr: String, shape: [Int], bytes: [UInt8]) throws {
        let dims = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(dims), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        out += Array(header.utf8) + bytes
        try Data(out).write(to: URL(fileURLWithPath: path))
    }

    /// 60 rows, 3 layers, d_model 16, 3 classes with a class signal growing with depth.
    static func makeData(_ dir: String) throws -> (acts: String, labels: String) {
        let n = 60, layers = 3, d = 16
        var values: [Float] = []
        var labels: [Int64] = []
        for i in 0..<n {
            let y = i % 3
            labels.append(Int64(y))
            for l in 0..<layers {
                for k in 0..<d {
                    let noise = Float(sin(Double(i * 131 + l * 17 + k * 7)))
                    values.append(noise + (k % 3 == y ? Float(l) * 0.8 : 0))
                }
            }
        }
        let acts = dir + "/acts.npy", lab = dir + "/labels.npy"
        try writeNpy(acts, descr: "<f4", shape: [n, layers, d], bytes: values.withUnsafeBytes { Array($0) })
        try writeNpy(lab, descr: "<i8", shape: [n], bytes: labels.withUnsafeBytes { Array($0) })
        return (acts, lab)
    }

    @Test("shards import, then train: the documented files, progress lines, and a clear error for bad input")
    func importAndTrain() throws {
        let dir = scratch()
        let (acts, lab) = try Self.makeData(dir)
        let imp = try CLI.run(["shards", "import", "--activations", acts, "--labels", lab, "--label-names", "happy,neutral,sad",
                               "--out", dir + "/shards", "--rows-per-shard", "16"])
        #expect(imp.status == 0, "\(imp.stderr)")
        #expect(imp.stderr.contains("imported 60 rows (3 layers, d_model 16) into 4 F32 shards"), "\(imp.stderr)")
        let verify = try CLI.run(["shards", "verify", dir + "/shards"])
        #expect(verify.status == 0 && verify.stdout.contains("complete"), "\(verify.stdout)")

        let r = try CLI.run(["train", "--shards", dir + "/shards", "--out", dir + "/probes", "--epochs", "20", "--batch-size", "16",
                             "--threads", "2", "--layers", "1-2"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("epoch 20/20"), "no progress lines: \(r.stderr)")
        #expect(r.stderr.contains("trained 2 layers"), "\(r.stderr)")
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/probes"))
        for f in ["probe_at_layer_1.pth", "probe_at_layer_1_final.pth", "probe_at_layer_2.pth", "probe_at_layer_2_final.pth",
                  "probes.safetensors", "probe_training_metrics.csv", "probe_training_summary.md", "accuracy_by_layer.svg", "split.json"] {
            #expect(files.contains(f), "missing \(f) in \(files)")
        }
        #expect(!files.contains("probe_at_layer_0_final.pth"))
        let summary = try String(contentsOfFile: dir + "/probes/probe_training_summary.md", encoding: .utf8)
        #expect(summary.contains("| happy |") && summary.contains("**Best layer: "), "\(summary)")

        // A second run into the same directory is refused; a class with one row is named.
        let again = try CLI.run(["train", "--shards", dir + "/shards", "--out", dir + "/probes", "--epochs", "1"])
        #expect(again.status != 0 && again.stderr.contains("not empty"), "\(again.stderr)")
        let bad = try CLI.run(["train", "--shards", dir + "/nowhere", "--out", dir + "/p2"])
        #expect(bad.status != 0 && bad.stderr.contains(dir + "/nowhere"), "\(bad.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/p2"))
    }

    @Test("every train and import flag has help with an example")
    func help() throws {
        for (cmd, flags) in [(["train", "--help"], ["--shards", "--out", "--epochs", "--lr", "--beta1", "--beta2", "--weight-decay",
                                                      "--no-bias-decay", "--batch-size", "--val-batch-size", "--val-every",
                                                      "--val-fraction", "--seed", "--plateau-factor", "--plateau-patience",
                                                      "--plateau-on", "--split", "--no-shuffle", "--init", "--layers", "--threads",
                                                      "--max-memory", "--overwrite"]),
                             (["shards", "import", "--help"], ["--activations", "--key", "--labels", "--label-key", "--label-names",
                                                                "--out", "--rows-per-shard", "--dtype"])] {
            let r = try CLI.run(cmd)
            #expect(r.status == 0, "\(cmd): \(r.stderr)")
            for f in flags { #expect(r.stdout.contains(f), "\(cmd) help lacks \(f)") }
            #expect(r.stdout.contains("Example:") || r.stdout.contains("e.g."), "\(cmd)")
        }
    }
}
