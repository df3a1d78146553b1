import Extraction
import Foundation
import Model
import Probe
import Quant
import Formats
import Testing

/// Results do not depend on the number of threads: the forward pass with 1, 2 and 3 threads gives
/// bit-identical residuals for every kernel this CPU runs, f32 and Q8_0 weights, short prompts and prompts
/// long enough for the sgemm attention path; `extract` with 1, 2 and 3 threads writes byte-identical directories.
@Suite struct ThreadIndependenceTests {
    static let threadCounts = [1, 2, 3]

    /// Token ids spread over the vocabulary (deterministic), BOS first.
    static func prompt(_ count: Int, vocab: Int) -> [Int32] {
        [1] + (1..<count).map { i in Int32(3 + (i &* 2654435761 >> 7) % (vocab - 3)) }
    }

    /// How far apart two runs are: the number of floats whose bits differ and the largest difference.
    static func difference(_ a: [Float], _ b: [Float]) -> (count: Int, max: Float) {
        var n = 0, m: Float = 0
        for (x, y) in zip(a, b) where x.bitPattern != y.bitPattern { n += 1; m = max(m, abs(x - y)) }
        return (n + abs(a.count - b.count), m)
    }

    static let cases: [(model: String, kernel: Q8Kernel, q8: Bool)] =
        ["mha-f32", "gqa-bf16"].flatMap { m in Q8Kernel.supported.flatMap { k in [(m, k, false), (m, k, true)] } }

    @Test("1, 2 and 3 threads give bit-identical residuals (every kernel, f32 and Q8_0, prompts of 37 and 300+ tokens)",
          arguments: 0..<cases.count)
    func forwardPass(caseIndex: Int) throws {
        let (name, kernel, q8) = Self.cases[caseIndex]
        var reference: [[Float]]?
        for threads in Self.threadCounts {
            // As `extract --threads N` loads the model.
            let loaded = try LoadedModel.load(path: Paths.model(name), threads: threads,
                                              backend: kernel == .portable ? .blas : .simd, kernel: kernel)
            let pool = loaded.model.pool
            let w = q8 ? loaded.model.weights.quantizedQ8_0(pool: pool) : loaded.model.weights
            let m = LlamaModel(weights: w, pool: pool, backend: kernel == .portable ? .blas : .simd, kernel: kernel)
            let prompts = [Self.prompt(37, vocab: m.config.vocabSize), Self.prompt(301, vocab: m.config.vocabSize)]
            var out: [[Float]] = []
            for p in prompts {
                out.append(try m.capture(p, CaptureOptions(positions: .all, embeddings: true)).residPost)
                out.append(try m.capture(p, CaptureOptions(positions: .last)).residPost)
            }
            if let reference {
                for (i, (a, b)) in zip(reference, out).enumerated() {
                    let d = Self.difference(a, b)
                    #expect(d.count == 0, "\(name) \(q8 ? "Q8_0" : "f32") \(kernel), \(threads) threads vs 1, run \(i) (\([37, 301][i / 2]) tokens, \(i % 2 == 0 ? "all" : "last") positions): \(d.count) of \(a.count) floats differ, by up to \(d.max)")
                }
            } else {
                reference = out
            }
        }
    }

    /// Rows of about 300-600 tokens (several demo messages joined) and a few short ones.
    static func longCSV() -> String {
        let d = try! Dataset(path: Paths.repo.appendingPathComponent("data/demo/emotions.csv").path)
        var messages: [(String, String)] = []
        for case .success(let r) in d.rows.prefix(40) {
            guard case .message(let m) = r.content else { continue }
            messages.append((m.replacingOccurrences(of: "\"", with: "\"\""), r.label))
        }
        var out = "message,label\n"
        for i in 0..<6 {
            let joined = (0..<12).map { messages[(i * 5 + $0) % messages.count].0 }.joined(separator: " ")
            out += "\"\(joined)\",\(messages[i].1)\n"
            out += "\"\(messages[i + 10].0)\",\(messages[i + 10].1)\n"
        }
        return out
    }

    @Test("extract with 1, 2 and 3 threads writes byte-identical shards and manifests (HF f32 and Q8_0 GGUF)",
          arguments: [Paths.model("gqa-bf16"), Paths.fixtures.appendingPathComponent("gguf/gqa-bf16-q8_0.gguf").path])
    func extract(model: String) throws {
        let dir = tempDir()
        writeFile(dir + "/d.csv", Self.longCSV())
        var snapshots: [Int: [String: Data]] = [:]
        for threads in Self.threadCounts {
            var c = ExtractionConfig(modelPath: model, dataPath: dir + "/d.csv", outDir: dir + "/t\(threads)")
            c.rowsPerShard = 5
            c.threads = threads
            let s = try Extractor.run(c)
            #expect(s.rows == 12 && s.tokens > 12 * 150)
            snapshots[threads] = try snapshot(dir + "/t\(threads)")
        }
        // The long rows do reach the sgemm attention path.
        let tokens = try ShardDirectory(path: dir + "/t1").shardPaths.flatMap { try Shard.read(path: $0).nTokens }
        #expect(tokens.filter { $0 >= 300 }.count >= 3, "\(tokens)")
        for threads in Self.threadCounts.dropFirst() {
            #expect(snapshots[threads]!.keys.sorted() == snapshots[1]!.keys.sorted())
            for (file, bytes) in snapshots[1]! {
                #expect(snapshots[threads]![file] == bytes, "\(model): \(file) differs between 1 and \(threads) threads")
            }
        }
    }

    @Test("a resume with another kernel is refused naming both; a resume with another thread count is not")
    func resumeChecksKernelNotThreads() throws {
        let q8 = Paths.fixtures.appendingPathComponent("gguf/gqa-bf16-q8_0.gguf").path
        let kernels = Q8Kernel.supported.filter { $0 != .portable }
        guard !kernels.isEmpty else { return }   // only the blas path on this CPU: no other kernel to resume with
        let dir = tempDir()
        writeFile(dir + "/d.csv", demoCSV(rows: 10))
        var c = ExtractionConfig(modelPath: q8, dataPath: dir + "/d.csv", outDir: dir + "/out")
        c.rowsPerShard = 5
        c.threads = 1
        c.kernel = kernels[0]
        _ = try Extractor.run(c)
        // Drop the second shard: a resume has something to do.
        let shards = try ShardDirectory(path: dir + "/out").shardPaths.sorted()
        #expect(shards.count == 2)
        try FileManager.default.removeItem(atPath: shards[1])
        var other = c
        other.backend = .blas
        do { _ = try Extractor.run(other); Issue.record("accepted another kernel") } catch {
            let text = error.localizedDescription
            #expect(text.contains(kernels[0].rawValue) && text.contains(Q8Kernel.portable.summary), "\(text)")
        }
        var moreThreads = c
        moreThreads.threads = 3
        let s = try Extractor.run(moreThreads)
        #expect(s.rows == 5 && s.rowsAlreadyDone == 5)
        let v = try ShardVerification.run(directory: dir + "/out")
        #expect(v.isComplete && v.rows == 10, "\(v.problems)")
    }

    func snapshot(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) {
            out[f] = f.hasPrefix(".lock-") ? Data() : try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))
        }
        return out
    }
}
