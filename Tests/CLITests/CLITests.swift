import Foundation
import Model
import Quant
import Formats
import Testing

/// Runs the built `llamaprobe` executable (it sits next to the test bundle in the build directory).
struct CLI {
    static var executable: String {
        let bundleDir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        return bundleDir.appendingPathComponent("llamaprobe").path
    }
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures")

    struct Result { let status: Int32; let stdout: String; let stderr: String }

    static func run(_ args: [String]) throws -> Result {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw CLIError(message: "\(executable) is not built; run `swift build` (make test does) before the tests")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        // A crash shows up as an uncaught signal, not a clean exit status.
        #expect(p.terminationReason == .exit, "llamaprobe \(args) crashed: \(String(decoding: e, as: UTF8.self))")
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self))
    }

    struct CLIError: Error, CustomStringConvertible { let message: String; var description: String { message } }
}

func scratch(_ name: String = #function) -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("llamaprobe-cli-\(name.filter(\.isLetter))-\(UUID().uuidString.prefix(8))").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite struct CLITests {
    @Test("tokenize --ids prints HF's ids for Meta's tokenizer")
    func tokenizeIDs() throws {
        let tok = CLI.fixtures.appendingPathComponent("llama2-tokenizer/tokenizer.model").path
        let r = try CLI.run(["tokenize", "--tokenizer", tok, "--template", "raw", "--ids", "Hello world"])
        #expect(r.status == 0 && r.stdout == "1 15043 3186\n")
        let chat = try CLI.run(["tokenize", "--tokenizer", tok, "--ids", "I feel happy today."])
        #expect(chat.stdout.hasPrefix("1 518 25580 29962 306 4459 9796 9826 29889 518 29914 25580 29962 306 1348"))
        let pieces = try CLI.run(["tokenize", "--tokenizer", tok, "--template", "raw", "Hello"])
        #expect(pieces.stdout.contains("15043\t▁Hello"))
    }

    @Test("info names the family, the window and the tokenizer, for a directory and for the GGUF made from it")
    func infoFamilies() throws {
        let dir = CLI.fixtures.appendingPathComponent("models/mistral-window").path
        let hf = try CLI.run(["info", "--model", dir])
        #expect(hf.status == 0 && hf.stdout.contains("family=mistral") && hf.stdout.contains("window=4096")
                && hf.stdout.contains("tokenizer: \(dir)/tokenizer.model: SentencePiece, 384 tokens"), "\(hf.stdout)")
        let gguf = scratch() + "/m.gguf"
        #expect(try CLI.run(["quantize", "--model", dir, "--out", gguf]).status == 0)
        let g = try CLI.run(["info", "--model", gguf])
        #expect(g.status == 0 && g.stdout.contains("family=mistral") && g.stdout.contains("window=4096")
                && g.stdout.contains("SentencePiece, 384 tokens"), "\(g.stdout)")
        let q = try CLI.run(["info", "--model", CLI.fixtures.appendingPathComponent("models/qwen2-bias").path])
        #expect(q.stdout.contains("family=qwen2") && q.stdout.contains("qkv_bias") && !q.stdout.contains("window="), "\(q.stdout)")
    }

    @Test("residuals writes the documented tensors and matches the reference")
    func residualsEndToEnd() throws {
        let dir = scratch()
        let prompts = dir + "/prompts.txt"
        // Case "hello" of the fixtures is raw "Hello"-like text; use the cases file to stay in sync.
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: CLI.fixtures.appendingPathComponent("cases.json"))) as! [[String: Any]]
        let raw = cases.enumerated().filter { ($0.element["template"] as! String) == "raw" }.prefix(4)
        try raw.map { PromptFile.escape($0.element["text"] as! String) }.joined(separator: "\n")
            .appending("\n").write(toFile: prompts, atomically: true, encoding: .utf8)
        let out = dir + "/out.safetensors"
        let model = CLI.fixtures.appendingPathComponent("models/gqa-f16-theta").path
        let r = try CLI.run(["residuals", "--model", model, "--prompts", prompts, "--out", out, "--template", "raw",
                             "--logits", "--with-embeddings", "--threads", "2"])
        #expect(r.status == 0, "\(r.stderr)")
        let f = try SafeTensorsFile(path: out)
        let ref = try SafeTensorsFile(path: CLI.fixtures.appendingPathComponent("references/gqa-f16-theta.safetensors").path)
        for (j, (i, _)) in raw.enumerated() {
            #expect(try f.integers("p\(j).tokens") == (try ref.integers("p\(i).tokens")))
            for (mine, theirs) in [("resid_post", "resid_post"), ("embed", "embed"), ("logits_last", "logits_last")] {
                let a = try f.floats("p\(j).\(mine)"), b = try ref.floats("p\(i).\(theirs)")
                let err = zip(a, b).map { abs($0 - $1) }.max()! / b.map(abs).max()!
                #expect(err <= 1e-4, "p\(j).\(mine): \(err)")
            }
        }
    }

    @Test("residuals --hooks writes one tensor per hook, named p{i}.{hook}, equal to HF's forward hooks; a bad name is refused")
    func residualsHooks() throws {
        let dir = scratch()
        let prompts = dir + "/prompts.txt"
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: CLI.fixtures.appendingPathComponent("cases.json"))) as! [[String: Any]]
        let hello = cases.first { ($0["name"] as! String) == "hello" }!
        try (PromptFile.escape(hello["text"] as! String) + "\n").write(toFile: prompts, atomically: true, encoding: .utf8)
        let out = dir + "/out.safetensors"
        let model = CLI.fixtures.appendingPathComponent("models/gqa-f16-theta").path
        let r = try CLI.run(["residuals", "--model", model, "--prompts", prompts, "--out", out, "--template", "raw",
                             "--hooks", "mlp_out,resid_pre,attn_out", "--threads", "2"])
        #expect(r.status == 0, "\(r.stderr)")
        let f = try SafeTensorsFile(path: out)
        #expect(Set(f.tensors.keys) == ["p0.tokens", "p0.mlp_out", "p0.resid_pre", "p0.attn_out"])
        #expect(f.metadata["hook"] == "mlp_out,resid_pre,attn_out")
        // Tests/fixtures/hooks: p0 is case "hello", [layers, T, d] at every position.
        let ref = try SafeTensorsFile(path: CLI.fixtures.appendingPathComponent("hooks/gqa-f16-theta.safetensors").path)
        let T = try ref.integers("p0.tokens").count, d = 64
        #expect(try f.integers("p0.tokens") == (try ref.integers("p0.tokens")))
        for h in ["mlp_out", "resid_pre", "attn_out"] {
            let a = try f.floats("p0.\(h)"), all = try ref.floats("p0.\(h)")
            #expect(a.count == 2 * d)
            var b: [Float] = []
            for l in 0..<2 {
                let start = (l * T + T - 1) * d
                b += all[start..<(start + d)]
            }
            var maxDiff: Float = 0, maxRef: Float = 0
            for (x, y) in zip(a, b) { maxDiff = max(maxDiff, abs(x - y)); maxRef = max(maxRef, abs(y)) }
            let err = maxDiff / maxRef
            #expect(err <= 1e-4, "p0.\(h): \(err)")
        }
        let bad = try CLI.run(["residuals", "--model", model, "--prompts", prompts, "--out", dir + "/bad.safetensors",
                               "--hooks", "resid_post,hook_attn_out"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("--hooks: unknown hook 'hook_attn_out' (known: resid_pre, attn_out, resid_mid, mlp_out, resid_post)"), "\(bad.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad.safetensors"))
    }

    /// Every bad input: one clear message naming the file (and tensor), exit status 1, no crash, no output file.
    @Test("bad input gives one clear error and a non-zero exit")
    func badInput() throws {
        let dir = scratch()
        let prompts = dir + "/p.txt"
        try "hello\n".write(toFile: prompts, atomically: true, encoding: .utf8)
        let out = dir + "/out.safetensors"
        func expectFailure(_ args: [String], mentions: [String]) throws {
            let r = try CLI.run(args)
            #expect(r.status != 0, "\(args) succeeded")
            for m in mentions { #expect(r.stderr.contains(m), "\(args): stderr was \(r.stderr)") }
            #expect(r.stderr.components(separatedBy: "Error:").count == 2, "expected one error line: \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out))
        }
        // Missing model and prompts files.
        try expectFailure(["residuals", "--model", dir + "/nope", "--prompts", prompts, "--out", out], mentions: [dir + "/nope"])
        let good = CLI.fixtures.appendingPathComponent("models/gqa-bf16").path
        try expectFailure(["residuals", "--model", good, "--prompts", dir + "/missing.txt", "--out", out], mentions: ["missing.txt"])

        // Truncated safetensors.
        let broken = dir + "/broken"
        try FileManager.default.copyItem(atPath: good, toPath: broken)
        let st = broken + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: st))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: st))
        try expectFailure(["residuals", "--model", broken, "--prompts", prompts, "--out", out], mentions: [st, "truncated", "tensor '"])

        // Absurd header length.
        var absurd = data
        absurd.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64.max.littleEndian) { Data($0) })
        try absurd.write(to: URL(fileURLWithPath: st))
        try expectFailure(["info", "--model", broken], mentions: [st, "absurd"])

        // NaN in a weight.
        try data.write(to: URL(fileURLWithPath: st))
        let info = try SafeTensorsFile(path: st).info("model.norm.weight")
        var nan = data
        nan[info.fileOffset] = 0xC0; nan[info.fileOffset + 1] = 0x7F   // bf16 NaN
        try nan.write(to: URL(fileURLWithPath: st))
        try expectFailure(["residuals", "--model", broken, "--prompts", prompts, "--out", out],
                          mentions: ["model.norm.weight", "non-finite"])

        // Wrong shape in config, unknown dtype, unsupported setting.
        try data.write(to: URL(fileURLWithPath: st))
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: broken + "/config.json"))) as! [String: Any]
        config["rope_scaling"] = ["type": "dynamic", "factor": 2.0]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: broken + "/config.json"))
        try expectFailure(["residuals", "--model", broken, "--prompts", prompts, "--out", out], mentions: ["rope_scaling", "config.json"])

        // Bad prompts file and bad flags.
        try "ok\nbad \\q escape\n".write(toFile: prompts, atomically: true, encoding: .utf8)
        try expectFailure(["residuals", "--model", good, "--prompts", prompts, "--out", out], mentions: ["p.txt:2", "escape"])
        try expectFailure(["residuals", "--model", good, "--prompts", prompts, "--out", out, "--positions", "middle"], mentions: ["positions"])
        try expectFailure(["synth", "--preset", "llama-3-8b", "--out", dir + "/m"], mentions: ["llama-2-13b"])
        try expectFailure(["tokenize", "hi"], mentions: ["--model", "--tokenizer"])
    }

    @Test("every subcommand has --help that explains its flags and shows an example")
    func help() throws {
        let commands: [([String], [String])] = [
            (["demo"], ["--out", "--data", "--threads"]),
            (["synth"], ["--preset", "--layers", "--seed", "--dtype", "--tokenizer", "--corpus"]),
            (["quantize"], ["--model", "--out", "--type", "--tokenizer", "--threads"]),
            (["tokenize"], ["--model", "--tokenizer", "--template", "--suffix", "--system-prompt", "--ids"]),
            (["residuals"], ["--model", "--prompts", "--out", "--template", "--positions", "--with-embeddings", "--logits", "--threads", "--backend", "--kernel"]),
            (["extract"], ["--model", "--data", "--out", "--text-column", "--label-column", "--labels", "--template", "--suffix",
                           "--system-prompt", "--max-tokens", "--with-embeddings", "--dtype", "--rows-per-shard", "--worker", "--workers", "--on-error", "--threads"]),
            (["shards", "verify"], []), (["shards", "info"], []), (["shards", "import"], ["--activations", "--labels", "--out"]),
            (["train"], ["--shards", "--out", "--epochs", "--lr", "--beta1", "--beta2", "--weight-decay", "--batch-size", "--val-batch-size",
                         "--val-every", "--val-fraction", "--seed", "--plateau-factor", "--plateau-patience", "--layers", "--threads", "--max-memory"]),
            (["predict"], ["--model", "--probes", "--layer", "--template", "--data", "--label-column", "--labels", "--json"]),
            (["generate"], ["--model", "--max-new-tokens", "--template", "--temperature", "--top-p", "--seed", "--ids", "--margins",
                             "--steer-vector", "--steer-layer", "--steer-strength", "--steer-probes", "--steer-class"]),
            (["bench"], ["--model", "--synthetic", "--layers", "--tokens", "--threads", "--backend", "--kernel", "--json"]),
            (["info"], ["--model"]),
        ]
        for (sub, flags) in commands {
            let r = try CLI.run(sub + ["--help"])
            #expect(r.status == 0, "\(sub) --help failed")
            for f in flags { #expect(r.stdout.contains(f), "\(sub) --help lacks \(f)") }
            #expect(r.stdout.contains("Example"), "\(sub) --help has no example")
        }
    }

    /// The README's blocks marked `<!-- runnable -->` run as written (on the demo model), so the README
    /// cannot drift from the code.
    @Test("the README's runnable command blocks run")
    func readmeBlocks() throws {
        let repo = CLI.fixtures.deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: repo.appendingPathComponent("README.md"), encoding: .utf8)
        var blocks: [String] = []
        var rest = readme[...]
        while let m = rest.range(of: "<!-- runnable -->\n```sh\n") {
            guard let end = rest.range(of: "\n```", range: m.upperBound..<rest.endIndex) else { break }
            blocks.append(String(rest[m.upperBound..<end.lowerBound]))
            rest = rest[end.upperBound...]
        }
        #expect(!blocks.isEmpty, "README.md has no <!-- runnable --> blocks")
        let dir = scratch()
        try FileManager.default.createSymbolicLink(atPath: dir + "/data", withDestinationPath: repo.appendingPathComponent("data").path)
        let bin = URL(fileURLWithPath: CLI.executable).deletingLastPathComponent().path
        for (i, block) in blocks.enumerated() {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = ["-euo", "pipefail", "-c", block]
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            var env = ProcessInfo.processInfo.environment
            env["PATH"] = bin + ":" + (env["PATH"] ?? "/usr/bin:/bin")
            p.environment = env
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "README block \(i + 1) failed:\n\(block)\n\(errText.suffix(2000))")
        }
    }

    @Test("synth writes a loadable checkpoint with the requested shape and dtype")
    func synth() throws {
        let dir = scratch() + "/m"
        let corpus = CLI.fixtures.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("data/tokenizer/corpus.txt").path
        let r = try CLI.run(["synth", "--preset", "llama-2-7b", "--layers", "1", "--dtype", "bf16", "--out", dir,
                             "--corpus", corpus, "--seed", "5"])
        #expect(r.status == 0, "\(r.stderr)")
        let c = try LlamaConfig.load(path: dir + "/config.json")
        #expect(c.hiddenSize == 4096 && c.intermediateSize == 11008 && c.numHiddenLayers == 1 && c.vocabSize == 32000)
        #expect(c.storageDtype == "bfloat16")
        let info = try CLI.run(["info", "--model", dir])
        #expect(info.status == 0 && info.stdout.contains("d_model=4096"))
        let tok = try Tokenizer(path: dir + "/tokenizer.model")
        #expect(tok.vocabSize == 4096)
        #expect(info.stdout.contains("tokenizer: \(dir)/tokenizer.model: SentencePiece, 4096 tokens"), "\(info.stdout)")
        // Without any tokenizer the directory is not valid; with only a tokenizer.json it is (byte-level BPE).
        try FileManager.default.removeItem(atPath: dir + "/tokenizer.model")
        let none = try CLI.run(["info", "--model", dir])
        #expect(none.status != 0 && none.stderr.contains("has neither tokenizer.model (SentencePiece) nor tokenizer.json (BPE)"), "\(none.stderr)")
        try FileManager.default.copyItem(atPath: CLI.fixtures.appendingPathComponent("bpe/qwen2/tokenizer.json").path, toPath: dir + "/tokenizer.json")
        let bpe = try CLI.run(["info", "--model", dir])
        #expect(bpe.status == 0 && bpe.stdout.contains("byte-level BPE, 904 tokens"), "\(bpe.stdout) \(bpe.stderr)")
    }
}
