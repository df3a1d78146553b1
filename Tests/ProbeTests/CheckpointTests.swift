import Foundation
import Probe
import Testing

/// The .pth writer: our own reader always, PyTorch's `torch.load(weights_only=True)` when torch is installed.
@Suite struct CheckpointTests {
    static func probeTensors(classes: Int = 7, dModel: Int = 96, seed: Float = 1) -> [TorchTensor] {
        let w = (0..<(classes * dModel)).map { Float(sin(Double($0) * 0.37 + Double(seed))) * 0.05 }
        let b = (0..<classes).map { Float($0) * -0.25 + seed }
        return [TorchTensor(name: "classifier.0.weight", shape: [classes, dModel], values: w),
                TorchTensor(name: "classifier.0.bias", shape: [classes], values: b)]
    }

    @Test("our reader reads back what we write; corruption is detected")
    func roundTrip() throws {
        let dir = scratchDirectory()
        let t = Self.probeTensors()
        try TorchCheckpoint.write(t, to: dir + "/probe_at_layer_3.pth")
        #expect(try TorchCheckpoint.read(path: dir + "/probe_at_layer_3.pth") == t)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/probe_at_layer_3.pth")))
        // Deterministic: the same tensors give the same file.
        #expect(TorchCheckpoint.encode(t, archiveName: "probe_at_layer_3") == bytes)
        bytes[bytes.count / 2] ^= 0x55
        #expect(throws: CheckpointError.self) { _ = try TorchCheckpoint.decode(bytes, name: "x.pth") }
        #expect(throws: CheckpointError.self) { _ = try TorchCheckpoint.decode(Array(bytes.prefix(100)), name: "x.pth") }
    }

    @Test("torch.load(weights_only=True) loads our .pth into the reference Probe module")
    func torchLoads() throws {
        let dir = scratchDirectory()
        let t = Self.probeTensors(classes: 7, dModel: 96, seed: 0.5)
        try TorchCheckpoint.write(t, to: dir + "/probe_at_layer_0_final.pth")
        let script = """
        import sys, torch
        from torch import nn
        class Probe(nn.Module):
            def __init__(self):
                super().__init__()
                self.classifier = nn.Sequential(nn.Linear(96, 7), nn.Sigmoid())
        sd = torch.load(sys.argv[1], weights_only=True)
        assert type(sd).__name__ == "OrderedDict", type(sd)
        assert list(sd.keys()) == ["classifier.0.weight", "classifier.0.bias"], list(sd.keys())
        p = Probe(); p.load_state_dict(sd)
        w, b = sd["classifier.0.weight"], sd["classifier.0.bias"]
        assert w.dtype == torch.float32 and tuple(w.shape) == (7, 96) and tuple(b.shape) == (7,)
        torch.save(p.state_dict(), sys.argv[2])
        print(repr(float(w[3, 5])), repr(float(b[6])), repr(float(w.double().sum())))
        """
        guard let out = try PythonTorch.run(script, [dir + "/probe_at_layer_0_final.pth", dir + "/resaved.pth"]) else {
            print("skipped: python3 with torch is not installed (our own reader still checked the files)")
            return
        }
        // torch's own file, read by our reader.
        #expect(try TorchCheckpoint.read(path: dir + "/resaved.pth") == t)
        let parts = out.split(separator: " ").map { Double($0.trimmingCharacters(in: .whitespacesAndNewlines))! }
        #expect(Float(parts[0]) == t[0].values[3 * 96 + 5])
        #expect(Float(parts[1]) == t[1].values[6])
        #expect(abs(parts[2] - t[0].values.reduce(0.0) { $0 + Double($1) }) < 1e-9)
    }
}

/// Runs a Python script with torch; nil when python3 or torch is not installed.
enum PythonTorch {
    static func run(_ script: String, _ args: [String]) throws -> String? {
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = ["python3", "-c", script] + args
        let out = Pipe(), err = Pipe()
        proc.standardOutput = out
        proc.standardError = err
        do { try proc.run() } catch { return nil }
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        let stderr = String(decoding: e, as: UTF8.self)
        if proc.terminationStatus == 127 || stderr.contains("No module named 'torch'") { return nil }
        guard proc.terminationStatus == 0 else { throw TrainError("python3 failed: \(stderr)") }
        return String(decoding: o, as: UTF8.self)
    }
}
