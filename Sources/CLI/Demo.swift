import ArgumentParser
import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The whole pipeline on the built-in demo model, printing each command it runs.",
        discussion: """
        Synthesizes the `tiny` demo model (random weights: its probes show the pipeline working, not \
        science), quantizes it to int8, extracts the residual stream of every layer for the demo dataset \
        (data/demo/emotions.csv) into shards, trains one probe per layer, writes the report and classifies \
        two new messages. Every step is a real llamaprobe command, printed so you can copy it. OUT is \
        emptied first.

        Example: llamaprobe demo --out demo-run
        """)

    @Option(help: ArgumentHelp("Working directory for the demo's outputs (emptied first).", valueName: "dir"))
    var out: String = "demo-run"

    @Option(help: ArgumentHelp("Labelled dataset (default: data/demo/emotions.csv).", valueName: "file"))
    var data: String?

    @Option(help: "Threads (the default is this machine's core count).")
    var threads: Int = ThreadPool.defaultThreadCount

    func run() throws {
        let exe = Self.executablePath
        let dataPath = try data ?? locate("data/demo/emotions.csv")
        let marker = out + "/.llamaprobe-demo"
        let existing = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
        if !existing.isEmpty && !FileManager.default.fileExists(atPath: marker) {
            throw CLIError("\(out) exists and is not a demo directory; pass a new --out (the demo empties it first)")
        }
        try? FileManager.default.removeItem(atPath: out)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: marker, contents: Data()) else {
            throw CLIError("cannot write \(marker); is \(out) writable?")
        }
        let model = out + "/model", gguf = out + "/model.q8_0.gguf", shards = out + "/shards", probes = out + "/probes"
        let t = String(threads)
        let t0 = now()
        try step(exe, ["synth", "--preset", "tiny", "--out", model, "--seed", "1"])
        try step(exe, ["quantize", "--model", model, "--out", gguf, "--threads", t])
        let extractLog = try step(exe, ["extract", "--model", gguf, "--data", dataPath, "--out", shards, "--threads", t])
        try step(exe, ["train", "--shards", shards, "--out", probes, "--threads", t])
        try step(exe, ["predict", "--model", gguf, "--probes", probes, "I finally got the job I wanted, I can't stop smiling!",
                       "Everything feels heavy and I haven't slept in days."])

        // Where to look.
        let dir = try ShardDirectory(path: shards)
        let onDisk = dir.manifests.flatMap(\.shards).reduce(0) { $0 + $1.bytes }
        let raw = dir.totalRows * dir.metadata.layers.count * dir.metadata.dModel * 4
        let set = try ProbeSet.load(directory: probes)
        let bestAcc = try ProbeSet.bestFromMetrics(probes + "/" + ProbeFiles.metrics)?.accuracy ?? 0
        let rate = extractLog.range(of: #"= ([0-9.]+) tokens/s"#, options: .regularExpression)
            .map { String(extractLog[$0]).dropFirst(2).replacingOccurrences(of: " tokens/s", with: "") } ?? "?"
        print("""

        Demo finished in \(String(format: "%.0f", now() - t0)) s. Where to look:
          report:      \(probes)/probe_training_summary.md (accuracy by layer: \(probes)/accuracy_by_layer.svg)
          best layer:  \(set.bestLayer.map(String.init) ?? "?"), validation accuracy \(String(format: "%.3f", bestAcc)) (random-weight model: the pipeline, not science)
          shards:      \(shards): \(String(format: "%.2f", Double(onDisk) / 1e6)) MB on disk for \(String(format: "%.2f", Double(raw) / 1e6)) MB of f32 residuals (\(dir.totalRows) rows × \(dir.metadata.layers.count) layers × \(dir.metadata.dModel))
          extraction:  \(rate) tokens/s
        Next: the README's "Running LLaMA-2-13B-chat" section.
        """)
    }

    /// This binary's path: /proc/self/exe (argv[0] is only a name when the shell found the binary through PATH).
    static var executablePath: String {
        if let p = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return p }
        return Bundle.main.executablePath ?? CommandLine.arguments[0]
    }

    /// Prints the command, runs it (the same binary), shows its output and returns what it wrote to stderr.
    @discardableResult
    func step(_ exe: String, _ args: [String]) throws -> String {
        print("\n$ llamaprobe " + args.map(shellQuote).joined(separator: " "))
        fflush(stdout)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        final class Captured: @unchecked Sendable { var data = Data() }   // guarded by `lock`
        let captured = Captured()
        let lock = NSLock()
        err.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            lock.lock(); captured.data.append(d); lock.unlock()
            FileHandle.standardError.write(d)
        }
        try p.run()
        p.waitUntilExit()
        err.fileHandleForReading.readabilityHandler = nil
        let rest = err.fileHandleForReading.readDataToEndOfFile()
        lock.lock(); captured.data.append(rest); lock.unlock()
        FileHandle.standardError.write(rest)
        guard p.terminationStatus == 0 else {
            throw CLIError("step `llamaprobe \(args.joined(separator: " "))` failed with exit code \(p.terminationStatus)")
        }
        return String(decoding: captured.data, as: UTF8.self)
    }

    func locate(_ relative: String) throws -> String {
        var dir = URL(fileURLWithPath: Self.executablePath).resolvingSymlinksInPath().deletingLastPathComponent()
        var candidates = [FileManager.default.currentDirectoryPath + "/" + relative]
        for _ in 0..<5 {
            candidates.append(dir.appendingPathComponent(relative).path)
            dir = dir.deletingLastPathComponent()
        }
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
        throw CLIError("\(relative) not found; run from the repository or pass --data FILE")
    }
}

func shellQuote(_ s: String) -> String {
    if s.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:".contains($0) }) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
