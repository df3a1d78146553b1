import ArgumentParser
import Foundation
import Model
import Quant

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the pipeline on the built-in demo model, printing each command it runs.",
        discussion: """
        Synthesizes the `tiny` demo model (random weights: the residuals show the pipeline working, not \
        science) and captures the residual stream of every layer for the demo prompts.

        Example: llamaprobe demo --out demo-run
        """)

    @Option(help: ArgumentHelp("Working directory for the demo's outputs.", valueName: "dir"))
    var out: String = "demo-run"

    @Option(help: ArgumentHelp("Prompts file (default: data/demo/prompts.txt).", valueName: "file"))
    var prompts: String?

    @Option(help: "Threads (default: all cores).")
    var threads: Int = ThreadPool.defaultThreadCount

    func run() throws {
        let exe = CommandLine.arguments[0]
        let modelDir = out + "/model"
        let promptsPath = try prompts ?? locate("data/demo/prompts.txt")
        let residPath = out + "/residuals.safetensors"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)

        let steps: [[String]] = [
            ["synth", "--preset", "tiny", "--out", modelDir, "--seed", "1"],
            ["tokenize", "--model", modelDir, "I feel great today!"],
            ["residuals", "--model", modelDir, "--prompts", promptsPath, "--out", residPath, "--threads", String(threads)],
        ]
        let t0 = now()
        for args in steps {
            print("$ llamaprobe " + args.map(shellQuote).joined(separator: " "))
            fflush(stdout)
            try runSelf(exe, args)
        }

        // Summarise what was captured: per-layer RMS of resid_post over the prompts.
        let file = try SafeTensorsFile(path: residPath)
        let config = try LlamaConfig.load(path: modelDir + "/config.json")
        let n = file.names.filter { $0.hasSuffix(".resid_post") }.count
        var rms = [Double](repeating: 0, count: config.numHiddenLayers)
        for i in 0..<n {
            let r = try file.floats("p\(i).resid_post")
            let d = config.hiddenSize
            for l in 0..<config.numHiddenLayers {
                rms[l] += (r[(l * d)..<((l + 1) * d)].reduce(0) { $0 + Double($1 * $1) } / Double(d)).squareRoot() / Double(n)
            }
        }
        print("\nresid_post at the readout token, mean RMS over \(n) prompts:")
        for (l, v) in rms.enumerated() { print(String(format: "  layer %2d  %.4f", l, v)) }
        print(String(format: "\ndemo finished in %.1f s. Residuals: %@", now() - t0, residPath))
        print("Read them in Python: from safetensors.numpy import load_file; r = load_file('\(residPath)'); r['p0.resid_post'].shape")
    }

    func runSelf(_ exe: String, _ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ValidationError("step `llamaprobe \(args.joined(separator: " "))` failed with exit code \(p.terminationStatus)")
        }
    }

    func locate(_ relative: String) throws -> String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        var candidates = [FileManager.default.currentDirectoryPath + "/" + relative]
        for _ in 0..<5 {
            candidates.append(dir.appendingPathComponent(relative).path)
            dir = dir.deletingLastPathComponent()
        }
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
        throw ValidationError("\(relative) not found; run from the repository or pass --prompts FILE")
    }
}

func shellQuote(_ s: String) -> String {
    if s.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:".contains($0) }) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
