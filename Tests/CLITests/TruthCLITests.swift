import Foundation
import Probe
import Testing

/// Issue 10: help, version and errors that tell the truth; commands that work as a researcher calls them.
@Suite struct TruthCLITests {
    static func words(_ s: String) -> String { s.split(whereSeparator: \.isWhitespace).joined(separator: " ") }

    @Test("--version on the root command")
    func version() throws {
        let r = try CLI.run(["--version"])
        #expect(r.status == 0 && r.stdout.range(of: #"^[0-9]+\.[0-9]+\.[0-9]+\n$"#, options: .regularExpression) != nil, "\(r.stdout)\(r.stderr)")
    }

    @Test("help defaults print as a user would type them; --model help mentions GGUF everywhere")
    func helpDefaults() throws {
        let commands = [["demo"], ["synth"], ["quantize"], ["tokenize"], ["residuals"], ["extract"], ["shards", "import"], ["train"],
                        ["predict"], ["generate"], ["bench"], ["info"]]
        for c in commands {
            let r = try CLI.run(c + ["--help"])
            let help = Self.words(r.stdout)
            #expect(r.status == 0)
            for bad in ["Optional(", "WorkerSpec(", "LayerSelection(", "ByteSize(", "KernelChoice", "all cores). (default"] {
                #expect(!help.contains(bad), "\(c) --help shows '\(bad)': \(help)")
            }
        }
        let extract = Self.words(try CLI.run(["extract", "--help"]).stdout)
        #expect(extract.contains("(default: 0/1)") && extract.contains("--delimiter"), "\(extract)")
        #expect(Self.words(try CLI.run(["train", "--help"]).stdout).contains("(default: all)"))
        #expect(Self.words(try CLI.run(["train", "--help"]).stdout).contains("--allow-empty-classes"))
        for c in ["residuals", "extract", "predict", "generate", "info", "bench", "tokenize"] {
            let help = Self.words(try CLI.run([c, "--help"]).stdout)
            let options = help.range(of: "OPTIONS:").map { help[$0.upperBound...] } ?? ""
            let model = options.range(of: "--model <").map { String(options[$0.lowerBound...].prefix(260)) } ?? ""
            #expect(model.contains("GGUF"), "\(c) --model help does not mention GGUF: \(model)")
        }
    }

    @Test("info accepts a GGUF file")
    func infoGGUF() throws {
        let r = try CLI.run(["info", "--model", CLI.fixtures.appendingPathComponent("gguf/gqa-bf16-q8_0.gguf").path])
        #expect(r.status == 0 && r.stdout.contains("config:") && r.stdout.contains("Q8_0"), "\(r.stdout)\(r.stderr)")
        let missing = try CLI.run(["info", "--model", "/nonexistent/model.gguf"])
        #expect(missing.status != 0 && missing.stderr.contains("/nonexistent/model.gguf: does not exist"), "\(missing.stderr)")
    }

    @Test("generate appends no readout suffix unless --suffix is given")
    func generateSuffix() throws {
        let model = CLI.fixtures.appendingPathComponent("models/gqa-bf16").path
        func promptIDs(_ args: [String]) throws -> String {
            let r = try CLI.run(["generate", "--model", model, "--count", "1", "--margins"] + args + ["How are you?"])
            try #require(r.status == 0, "\(r.stderr)")
            return String(try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("prompt: ") }).dropFirst("prompt: ".count))
        }
        func tokenized(_ suffix: String) throws -> String {
            let r = try CLI.run(["tokenize", "--model", model, "--ids", "--suffix", suffix, "How are you?"])
            try #require(r.status == 0, "\(r.stderr)")
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try promptIDs([]) == (try tokenized("")))
        #expect(try promptIDs(["--suffix", " Sure,"]) == (try tokenized(" Sure,")))
    }

    @Test("demo works when the binary is found through PATH")
    func demoThroughPATH() throws {
        let dir = scratch()
        // 6 rows of each state from the demo data (the validation fifth must hold every class): a quick run.
        let all = try Dataset(path: PredictCLITests.repo.appendingPathComponent("data/demo/emotions.csv").path).rows.map { try $0.get() }
        var perLabel: [String: Int] = [:]
        let picked = all.filter { perLabel[$0.label, default: 0] += 1; return perLabel[$0.label]! <= 6 }
        try (["message,label"] + picked.map { r -> String in
            guard case .message(let m) = r.content else { return "" }
            return "\"" + m.replacingOccurrences(of: "\"", with: "\"\"") + "\"," + r.label
        }).joined(separator: "\n").appending("\n").write(toFile: dir + "/d.csv", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", "llamaprobe demo --out demo-run --data d.csv --threads 1"]
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = URL(fileURLWithPath: CLI.executable).deletingLastPathComponent().path + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        p.environment = env
        let err = Pipe(), out = Pipe()
        p.standardError = err
        p.standardOutput = out
        try p.run()
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0 && o.contains("Demo finished"), "\(o.suffix(1500))\n\(e.suffix(1500))")
        try? FileManager.default.removeItem(atPath: dir)
    }
}
